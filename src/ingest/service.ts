import { type EntryIndexApi, IndexError, type IndexRow, type ListRequest, type ListResponse } from '../index/index.ts';
import { canonicalJson, type Ledger, LedgerError } from '../ledger/index.ts';
import { completeEntry, type LogEntry, type LogEntryInput, validateEntry, BodyError, type EntryError } from '../model/index.ts';
import { componentLogger } from '../telemetry/index.ts';
import { InsertIdWindow } from './dedupe.ts';
import { ingestMetrics } from './metrics.ts';
import type { EntrySink } from './sink.ts';

export interface WriteResult {
  /** Entries appended by this call. */
  written: number;
  /** Entries skipped because their insertId was already stored (a retried batch). */
  duplicates: number;
  /** Tree size of the organization's ledger after the append. */
  treeSize: number;
  /** Ledger index of the first entry written; the rest follow in request order (for inclusion proofs). */
  firstIndex?: number;
}

type Subscriber = (entry: LogEntry) => void;

/** Entries appended but not yet indexed: their canonical JSON, from ledger index `first` on. */
interface PendingRun {
  first: number;
  lines: string[];
}

/** Rows per call into the index (which gathers them into row-group-sized commits of its own). */
const INDEX_BATCH = 131_072;

/**
 * The write path: complete and dedupe entries, append them to the organization's ledger (resolving once durable),
 * then feed the index and live subscribers. The index is derived: it follows the ledger in index order and catches
 * up from the ledger itself after a restart.
 */
export class IngestService {
  private readonly dedupe: InsertIdWindow;
  // Kept as canonical JSON text, not objects: a string per entry is cheap to hold while the index catches up and
  // is what the index stores anyway.
  private readonly pending = new Map<string, PendingRun[]>();
  private readonly indexedUpTo = new Map<string, number>();
  private readonly waiters = new Map<string, { size: number; resolve: () => void }[]>();
  private readonly subscribers = new Map<string, Set<Subscriber>>();
  private indexing: Promise<void> = Promise.resolve();
  private indexScheduled = false;
  private closed = false;
  private readonly log = componentLogger('ingest');

  private constructor(
    readonly ledger: Ledger,
    readonly index: EntryIndexApi,
    options: { dedupeWindow?: number },
  ) {
    this.dedupe = new InsertIdWindow(options.dedupeWindow ?? 1_000_000);
  }

  /** Opens the service and brings the index level with the ledger (the crash catch-up). */
  static async open(ledger: Ledger, index: EntryIndexApi, options: { dedupeWindow?: number; warmDedupe?: number } = {}): Promise<IngestService> {
    const service = new IngestService(ledger, index, options);
    for (const org of ledger.organizations()) {
      service.indexedUpTo.set(org, await index.indexedSize(org));
      await service.warmDedupe(org, options.warmDedupe ?? 100_000);
    }
    service.scheduleIndexing();
    await service.indexing;
    return service;
  }

  private async warmDedupe(org: string, count: number): Promise<void> {
    const size = this.ledger.treeSize(org);
    for await (const { entry } of this.ledger.read(org, Math.max(0, size - count), size)) this.dedupe.add(org, entry.insertId);
  }

  /** Not async itself: nothing of `inputs` is held while the append waits (see `append`). */
  write(org: string, inputs: LogEntryInput[]): Promise<WriteResult> {
    if (this.closed) return Promise.reject(new Error('ingest service is closed'));
    const receiveTimestamp = new Date().toISOString();
    const entries = inputs.map((input) => completeEntry(input, org, receiveTimestamp));
    const canonical: string[] = [];
    for (const [i, entry] of entries.entries()) {
      try {
        canonical.push(canonicalJson(entry));
      } catch (err) {
        return Promise.reject(new LedgerError('INVALID_ENTRY', `entry ${i + 1}: ${(err as Error).message}`, { org, cause: err }));
      }
    }
    const insertIds: string[] = [];
    const lines: string[] = [];
    let duplicates = 0;
    entries.forEach((entry, i) => {
      // Claimed before the append so a concurrent retry of the same batch is also caught.
      if (this.dedupe.has(org, entry.insertId)) {
        duplicates++;
        return;
      }
      this.dedupe.add(org, entry.insertId);
      insertIds.push(entry.insertId);
      lines.push(canonical[i] as string);
    });
    if (lines.length === 0) return Promise.resolve({ written: 0, duplicates, treeSize: this.ledger.treeSize(org) });
    return this.append(org, insertIds, lines, duplicates);
  }

  /**
   * Only the insertIds and the canonical text outlive the wait for the fsync: the entry objects die young, before
   * a scavenge would have to copy them (in a CPU profile of bench/ingest-http.ts, garbage collection fell from ~13 % to
   * ~5 % of the main thread).
   */
  private async append(org: string, insertIds: string[], lines: string[], duplicates: number): Promise<WriteResult> {
    let appended: { firstIndex: number; treeSize: number };
    const started = performance.now();
    try {
      appended = await this.ledger.appendCanonical(org, lines);
    } catch (err) {
      for (const insertId of insertIds) this.dedupe.delete(org, insertId);
      ingestMetrics.failures.inc({ org });
      throw err;
    }
    ingestMetrics.appendSeconds.observe((performance.now() - started) / 1000);
    ingestMetrics.entries.inc({ org }, lines.length);
    ingestMetrics.treeSize.set({ org }, appended.treeSize);
    // Entries the indexer already read back from the ledger (it runs concurrently) are not kept.
    const skip = Math.max(0, (this.indexedUpTo.get(org) ?? 0) - appended.firstIndex);
    if (skip < lines.length) {
      let runs = this.pending.get(org);
      if (!runs) this.pending.set(org, (runs = []));
      runs.push({ first: appended.firstIndex + skip, lines: skip === 0 ? lines : lines.slice(skip) });
    }
    this.scheduleIndexing();
    const subs = this.subscribers.get(org);
    if (subs?.size) {
      for (const line of lines) {
        const entry = JSON.parse(line) as LogEntry;
        for (const fn of subs) fn(entry);
      }
    }
    return { written: lines.length, duplicates, treeSize: appended.treeSize, firstIndex: appended.firstIndex };
  }

  /** Resolves when the index holds every entry the ledger had when called (read-your-writes), or after `timeoutMs`. */
  async waitIndexed(org: string, timeoutMs = 10_000): Promise<void> {
    const size = this.ledger.organizations().includes(org) ? this.ledger.treeSize(org) : 0;
    if ((this.indexedUpTo.get(org) ?? 0) >= size) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      let list = this.waiters.get(org);
      if (!list) this.waiters.set(org, (list = []));
      list.push({ size, resolve: () => (clearTimeout(timer), resolve()) });
    });
  }

  /**
   * A page of the index after it has caught up with every entry stored before the call (read-your-writes). If the
   * index lost rows it could not commit, it is fed again from the ledger first.
   */
  async list(request: ListRequest): Promise<ListResponse> {
    await this.waitIndexed(request.organization);
    try {
      return await this.index.list(request);
    } catch (err) {
      if (!(err instanceof IndexError && err.code === 'INDEX_UNCOMMITTED')) throw err;
      this.log.warn({ err }, 'index rows were lost; re-indexing them from the ledger');
      this.resync();
      await this.waitIndexed(request.organization);
      return this.index.list(request);
    }
  }

  /** Forgets where the index stood, so the next indexing pass reads it from the index and catches up from the ledger. */
  private resync(): void {
    this.indexedUpTo.clear();
    this.scheduleIndexing();
  }

  /** Live entries of an organization as they are stored; returns the unsubscribe function. */
  subscribe(org: string, fn: Subscriber): () => void {
    let subs = this.subscribers.get(org);
    if (!subs) this.subscribers.set(org, (subs = new Set()));
    subs.add(fn);
    return () => subs.delete(fn);
  }

  private scheduleIndexing(): void {
    if (this.indexScheduled) return;
    this.indexScheduled = true;
    this.indexing = this.indexing.then(async () => {
      this.indexScheduled = false;
      try {
        await this.indexPending();
      } catch (err) {
        this.log.error({ err }, 'indexing failed; will retry from the ledger');
        setTimeout(() => this.resync(), 1000).unref();
      }
    });
  }

  /** Moves each organization's index cursor forward, from memory where it can and from the ledger where it must. */
  private async indexPending(): Promise<void> {
    // Only this loop inserts into the index, so reading the index's own cursor here cannot race an insert.
    for (const org of this.ledger.organizations()) {
      let cursor = this.indexedUpTo.get(org) ?? (await this.index.indexedSize(org));
      const target = this.ledger.treeSize(org);
      while (cursor < target) {
        const batch = this.takePending(org, cursor, Math.min(target, cursor + INDEX_BATCH));
        if (batch.length === 0) {
          for await (const rows of this.ledger.readBatches(org, cursor, Math.min(target, cursor + INDEX_BATCH))) batch.push(...rows);
        }
        if (batch.length === 0) break;
        await this.index.insert(org, batch);
        cursor += batch.length;
        this.indexedUpTo.set(org, cursor);
        ingestMetrics.indexLag.set({ org }, this.ledger.treeSize(org) - cursor);
      }
      const list = this.waiters.get(org);
      if (list) {
        const still = list.filter((w) => (w.size > cursor ? true : (w.resolve(), false)));
        this.waiters.set(org, still);
      }
    }
    if ([...this.ledger.organizations()].some((org) => (this.indexedUpTo.get(org) ?? 0) < this.ledger.treeSize(org))) this.scheduleIndexing();
  }

  /**
   * The pending entries from `from` (up to `to`, exclusive) in one contiguous run, dropping runs that fall behind
   * `from`; empty when the entry at `from` is not held in memory (after a restart, or appended by another path).
   */
  private takePending(org: string, from: number, to: number): IndexRow[] {
    const runs = this.pending.get(org) ?? [];
    runs.sort((a, b) => a.first - b.first);
    while (runs.length > 0 && (runs[0] as PendingRun).first + (runs[0] as PendingRun).lines.length <= from) runs.shift();
    const batch: IndexRow[] = [];
    let next = from;
    for (const run of runs) {
      if (run.first > next || next >= to) break;
      const end = Math.min(run.first + run.lines.length, to);
      for (let i = next; i < end; i++) batch.push({ index: i, json: run.lines[i - run.first] as string });
      next = end;
    }
    return batch;
  }

  /** Rebuilds the index of one or all organizations from the ledger (`custos reindex`). */
  async reindex(onProgress?: (done: number, total: number) => void): Promise<number> {
    await this.indexing;
    await this.index.clear();
    const orgs = this.ledger.organizations();
    const total = orgs.reduce((n, org) => n + this.ledger.treeSize(org), 0);
    let done = 0;
    for (const org of orgs) {
      let batch: { index: number; entry: LogEntry }[] = [];
      const flush = async () => {
        await this.index.insert(org, batch);
        done += batch.length;
        onProgress?.(done, total);
        batch = [];
      };
      for await (const rows of this.ledger.readBatches(org, 0)) {
        for (const row of rows) batch.push(row);
        if (batch.length >= INDEX_BATCH) await flush();
      }
      if (batch.length) await flush();
      this.indexedUpTo.set(org, this.ledger.treeSize(org));
    }
    return done;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.indexing;
  }
}

/** A producer running inside `custos serve` writes through this, checked exactly as an HTTP client would be. */
export class InProcessSink implements EntrySink {
  constructor(
    private readonly service: IngestService,
    private readonly organization: string,
  ) {}

  async write(entries: LogEntryInput[]): Promise<void> {
    const errors: EntryError[] = [];
    const valid: LogEntryInput[] = [];
    entries.forEach((value, i) => {
      const { entry, errors: found } = validateEntry(value, i + 1);
      if (entry) valid.push(entry);
      errors.push(...found);
    });
    if (errors.length) throw new BodyError(400, errors);
    await this.service.write(this.organization, valid);
  }

  async close(): Promise<void> {}
}
