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

/** Entries appended but not yet indexed: `count` canonical JSON texts joined by line feeds, from ledger index `first` on. */
interface PendingRun {
  first: number;
  count: number;
  text: string;
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
  // Kept as canonical JSON text, not objects, and one string per batch: it is what the index thread receives, and a
  // garbage-collection scavenge has nothing of it to copy while it waits for the fsync and the index.
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
    const started = performance.now();
    // The ledger frames the lines into its record buffer before this call returns; from here on they live on only
    // as one joined string (a large object that scavenges do not copy).
    const appending = this.ledger.appendCanonical(org, lines);
    return this.afterAppend(org, insertIds, appending, started, lines.join('\n'), lines.length, duplicates);
  }

  /**
   * Only the insertIds and one string of canonical text outlive the wait for the fsync: the entry objects and the
   * per-entry strings die young, before a scavenge would have to copy them (in CPU profiles of bench/ingest-http.ts,
   * garbage collection fell from ~13 % to ~5 % of the main thread when the objects went; on a later machine it was
   * ~17 %, and ~15 % once the per-entry strings went too).
   */
  private async afterAppend(
    org: string, insertIds: string[], appending: Promise<{ firstIndex: number; treeSize: number }>, started: number, text: string, count: number, duplicates: number,
  ): Promise<WriteResult> {
    let appended: { firstIndex: number; treeSize: number };
    try {
      appended = await appending;
    } catch (err) {
      for (const insertId of insertIds) this.dedupe.delete(org, insertId);
      ingestMetrics.failures.inc({ org });
      throw err;
    }
    ingestMetrics.appendSeconds.observe((performance.now() - started) / 1000);
    ingestMetrics.entries.inc({ org }, count);
    ingestMetrics.treeSize.set({ org }, appended.treeSize);
    // Entries the indexer already read back from the ledger (it runs concurrently) are not kept.
    const skip = Math.max(0, (this.indexedUpTo.get(org) ?? 0) - appended.firstIndex);
    if (skip < count) {
      let runs = this.pending.get(org);
      if (!runs) this.pending.set(org, (runs = []));
      runs.push({ first: appended.firstIndex + skip, count: count - skip, text: skip === 0 ? text : linesOf(text, skip, count) });
    }
    this.scheduleIndexing();
    const subs = this.subscribers.get(org);
    if (subs?.size) {
      for (const line of text.split('\n')) {
        const entry = JSON.parse(line) as LogEntry;
        for (const fn of subs) fn(entry);
      }
    }
    return { written: count, duplicates, treeSize: appended.treeSize, firstIndex: appended.firstIndex };
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
        const held = this.takePending(org, cursor, Math.min(target, cursor + INDEX_BATCH));
        let taken = held?.count ?? 0;
        if (held) await this.index.insertRun(org, cursor, held.runs);
        else {
          const batch: IndexRow[] = [];
          for await (const rows of this.ledger.readBatches(org, cursor, Math.min(target, cursor + INDEX_BATCH))) batch.push(...rows);
          if (batch.length > 0) await this.index.insert(org, batch);
          taken = batch.length;
        }
        if (taken === 0) break;
        cursor += taken;
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
   * The pending entries from `from` (up to `to`, exclusive) as contiguous runs of text, dropping runs that fall
   * behind `from`; undefined when the entry at `from` is not held in memory (after a restart, or appended by another
   * path).
   */
  private takePending(org: string, from: number, to: number): { count: number; runs: string[] } | undefined {
    const runs = this.pending.get(org) ?? [];
    runs.sort((a, b) => a.first - b.first);
    while (runs.length > 0 && (runs[0] as PendingRun).first + (runs[0] as PendingRun).count <= from) runs.shift();
    const texts: string[] = [];
    let next = from;
    for (const run of runs) {
      if (run.first > next || next >= to) break;
      const end = Math.min(run.first + run.count, to);
      texts.push(next === run.first && end === run.first + run.count ? run.text : linesOf(run.text, next - run.first, end - run.first));
      next = end;
    }
    return next > from ? { count: next - from, runs: texts } : undefined;
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

/** Lines [from, to) of text whose lines are separated by line feeds, joined the same way. */
export function linesOf(text: string, from: number, to: number): string {
  let start = 0;
  for (let i = 0; i < from; i++) start = text.indexOf('\n', start) + 1;
  let end = start;
  for (let i = from; i < to; i++) {
    const feed = text.indexOf('\n', end);
    end = feed < 0 ? text.length : feed + 1;
  }
  return text.slice(start, end === text.length ? end : end - 1);
}
