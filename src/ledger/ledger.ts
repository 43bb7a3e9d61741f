import { mkdir, open, readdir, stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import type { LogEntry } from '../model/index.ts';
import { componentLogger } from '../telemetry/index.ts';
import { archiveSealedSegments, archiveTargetOf, type ArchiveTarget } from './archive.ts';
import { canonicalJson } from './canonical.ts';
import { assertOrganization, LedgerError } from './errors.ts';
import { lockLedgerDir } from './dir-lock.ts';
import { syncDirectory } from './fsutil.ts';
import { loadOrCreateSigner, type LedgerMeta } from './keys.ts';
import { EMPTY_ROOT } from './merkle.ts';
import { verifierKeyString, type NoteSigner } from './note.ts';
import { digestImplementation } from './digest.ts';
import { OrgLog } from './org-log.ts';
import { ScanPool } from './scan-pool.ts';
import { RecordBatch, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES } from './segment.ts';

export interface LedgerOptions {
  dir: string;
  /** Extra wait before a group commit so more appends join it; 0 (default) commits on the next turn of the event loop. */
  groupCommitMs?: number;
  /** A segment is sealed once it would grow past this (default 64 MiB). */
  segmentMaxBytes?: number;
  /** Checkpoints are signed this often while entries arrive (default 1000 ms). */
  checkpointIntervalMs?: number;
  /** Sealed segments are copied here; a segment is sealed and archived within `maxDelayMs` (default 24 h) of its first entry. */
  archive?: { target: ArchiveTarget | string; maxDelayMs?: number };
  /** Checkpoint origins are `${originPrefix}${org}` (default `custos/`); fixed when the data dir is created. */
  originPrefix?: string;
  /** Worker threads that re-hash segments on open (default: one per core once segments exceed 128 MiB, else none). */
  openWorkers?: number;
}

export interface InclusionProof {
  leafIndex: number;
  treeSize: number;
  hashes: string[];
}

export interface ConsistencyProof {
  from: number;
  to: number;
  hashes: string[];
}

const DEFAULT_SEGMENT_MAX_BYTES = 64 * 1024 * 1024;
const DEFAULT_ARCHIVE_DELAY_MS = 24 * 60 * 60 * 1000;
const READ_CHUNK_BYTES = 4 * 1024 * 1024;
const PARALLEL_OPEN_BYTES = 128 * 1024 * 1024;

async function segmentBytes(dir: string, orgs: string[]): Promise<number> {
  let total = 0;
  for (const org of orgs) {
    const segments = join(dir, 'orgs', org, 'segments');
    for (const name of await readdir(segments).catch(() => [] as string[])) total += (await stat(join(segments, name))).size;
  }
  return total;
}
const log = componentLogger('ledger');

/**
 * The source of truth: one append-only Merkle log per organization under `<dir>/orgs/<org>/`, signed checkpoints,
 * proofs, and the archive of sealed segments. `append` resolves only once its entries are fsynced.
 */
export class Ledger {
  private readonly logs = new Map<string, Promise<OrgLog>>();
  private readonly ready = new Map<string, OrgLog>();
  private readonly timers: NodeJS.Timeout[] = [];
  private archiving: Promise<void> = Promise.resolve();
  private closed = false;
  private unlock: () => Promise<void> = async () => {};

  private constructor(
    readonly dir: string,
    private readonly signer: NoteSigner,
    private readonly meta: LedgerMeta,
    private readonly options: LedgerOptions,
    private readonly archiveTarget: ArchiveTarget | undefined,
  ) {}

  static async open(options: LedgerOptions): Promise<Ledger> {
    const dir = options.dir;
    try {
      await mkdir(join(dir, 'orgs'), { recursive: true });
      await syncDirectory(dir);
    } catch (err) {
      throw new LedgerError('IO_ERROR', `cannot create data dir ${dir}: ${(err as Error).message}`, { cause: err });
    }
    const unlock = await lockLedgerDir(dir);
    try {
      return await Ledger.openLocked(options, unlock);
    } catch (err) {
      await unlock();
      throw err;
    }
  }

  private static async openLocked(options: LedgerOptions, unlock: () => Promise<void>): Promise<Ledger> {
    const dir = options.dir;
    const { signer, meta } = await loadOrCreateSigner(dir, options.originPrefix ?? 'custos/');
    const target = options.archive ? archiveTargetOf(options.archive.target) : undefined;
    const ledger = new Ledger(dir, signer, meta, options, target);
    ledger.unlock = unlock;
    log.info({ dir, digest: digestImplementation }, 'ledger opening');
    const orgs = (await readdir(join(dir, 'orgs'), { withFileTypes: true })).filter((entry) => entry.isDirectory()).map((entry) => entry.name);
    orgs.forEach(assertOrganization);
    // Rebuilding the trees re-hashes every entry: worth worker threads once there is more than a little data.
    const pool = new ScanPool(options.openWorkers ?? ((await segmentBytes(dir, orgs)) >= PARALLEL_OPEN_BYTES ? availableParallelism() : 0));
    try {
      for (const org of orgs) {
        const orgLog = await OrgLog.open(org, join(dir, 'orgs', org), ledger.orgLogOptions(org), pool);
        ledger.logs.set(org, Promise.resolve(orgLog));
        ledger.ready.set(org, orgLog);
      }
    } finally {
      await pool.close();
    }
    ledger.startTimers();
    return ledger;
  }

  private orgLogOptions(org: string) {
    return {
      groupCommitMs: this.options.groupCommitMs ?? 0,
      segmentMaxBytes: this.options.segmentMaxBytes ?? DEFAULT_SEGMENT_MAX_BYTES,
      signer: this.signer,
      origin: `${this.meta.originPrefix}${org}`,
      logger: log,
    };
  }

  private startTimers(): void {
    const interval = this.options.checkpointIntervalMs ?? 1000;
    this.timers.push(setInterval(() => void this.checkpointGrown(), interval).unref());
    if (this.archiveTarget) {
      const maxDelay = this.options.archive?.maxDelayMs ?? DEFAULT_ARCHIVE_DELAY_MS;
      this.timers.push(setInterval(() => void this.archive().catch((err: unknown) => log.error({ err }, 'archive run failed')), Math.max(10, Math.min(maxDelay / 4, 60_000))).unref());
    }
  }

  private async checkpointGrown(): Promise<void> {
    for (const orgLog of this.ready.values()) {
      if (orgLog.tree.size === orgLog.checkpointedSize) continue;
      await orgLog.checkpoint().catch((err: unknown) => log.error({ org: orgLog.org, err }, 'could not write checkpoint'));
    }
  }

  private orgLog(org: string): Promise<OrgLog> {
    let pending = this.logs.get(org);
    if (!pending) {
      pending = OrgLog.create(org, join(this.dir, 'orgs', org), this.orgLogOptions(org)).then(
        (created) => {
          this.ready.set(org, created);
          return created;
        },
        (err: unknown) => {
          this.logs.delete(org);
          throw new LedgerError('IO_ERROR', `cannot create the log of ${org}: ${(err as Error).message}`, { org, cause: err });
        },
      );
      this.logs.set(org, pending);
    }
    return pending;
  }

  private existing(org: string): OrgLog | undefined {
    assertOrganization(org);
    return this.ready.get(org);
  }

  /** Appends entries to the organization's log; resolves once they are durable, with the index of the first. */
  async append(org: string, entries: LogEntry[]): Promise<{ firstIndex: number; treeSize: number }> {
    assertOrganization(org);
    return this.appendCanonical(org, entries.map((entry, i) => {
      // a tenant's log holds only its own entries, whatever a caller upstream got wrong
      if (entry.organization !== org) throw new LedgerError('INVALID_ENTRY', `entry ${i} belongs to organization ${JSON.stringify(entry.organization)}, not ${org}`, { org });
      try {
        return canonicalJson(entry);
      } catch (err) {
        throw new LedgerError('INVALID_ENTRY', `entry ${i}: ${(err as Error).message}`, { org, cause: err });
      }
    }));
  }

  /**
   * Appends entries given as their RFC 8785 canonical JSON (strings or UTF-8 bytes), for callers that serialize
   * elsewhere (a worker, or bytes read back from another ledger). The ledger hashes and stores them as given.
   */
  async appendCanonical(org: string, canonical: readonly (string | Uint8Array)[]): Promise<{ firstIndex: number; treeSize: number }> {
    if (this.closed) throw new LedgerError('CLOSED', 'ledger is closed', { org });
    assertOrganization(org);
    const batch = new RecordBatch(canonical.length * 1024, canonical.length);
    for (let i = 0; i < canonical.length; i++) {
      try {
        batch.add(canonical[i] as string | Uint8Array);
      } catch (err) {
        throw new LedgerError('INVALID_ENTRY', `entry ${i}: ${(err as Error).message}`, { org, cause: err });
      }
    }
    void batch.hashLeaves();
    const orgLog = await this.orgLog(org);
    if (batch.count === 0) return { firstIndex: orgLog.tree.size, treeSize: orgLog.tree.size };
    return orgLog.append(batch);
  }

  treeSize(org: string): number {
    return this.existing(org)?.tree.size ?? 0;
  }

  organizations(): string[] {
    return [...this.ready.keys()].sort();
  }

  /** Base64 root hash at `treeSize` (default: current). */
  rootHash(org: string, treeSize?: number): string {
    const orgLog = this.existing(org);
    if (!orgLog) return this.emptyOrgRoot(org, treeSize);
    return orgLog.tree.root(treeSize).toString('base64');
  }

  private emptyOrgRoot(org: string, treeSize?: number): string {
    if (treeSize !== undefined && treeSize !== 0) throw new LedgerError('INVALID_ARGUMENT', `${org} has no entries`, { org });
    return EMPTY_ROOT.toString('base64');
  }

  /** Entries `[from, to)` with their indexes, in order, read straight from the segment files. */
  async *read(org: string, from = 0, to?: number): AsyncIterable<{ index: number; entry: LogEntry }> {
    for await (const batch of this.readBatches(org, from, to)) yield* batch;
  }

  /** Like `read`, in arrays of up to a few thousand entries (one per 4 MiB read), for bulk consumers such as reindex. */
  readBatches(org: string, from = 0, to?: number): AsyncIterable<{ index: number; entry: LogEntry }[]> {
    return this.readRecords(org, from, to, (chunk, start, end, index) => ({ index, entry: JSON.parse(chunk.toString('utf8', start, end)) as LogEntry }));
  }

  /** Like `read`, but yields each entry's stored canonical JSON bytes (the bytes its Merkle leaf hashes). */
  async *readRaw(org: string, from = 0, to?: number): AsyncIterable<{ index: number; bytes: Buffer }> {
    for await (const batch of this.readRecords(org, from, to, (chunk, start, end, index) => ({ index, bytes: Buffer.from(chunk.subarray(start, end)) }))) yield* batch;
  }

  private async *readRecords<T>(org: string, from: number, to: number | undefined, decode: (chunk: Buffer, start: number, end: number, index: number) => T): AsyncIterable<T[]> {
    const orgLog = this.existing(org);
    const size = orgLog?.tree.size ?? 0;
    const end = Math.min(to ?? size, size);
    if (!Number.isSafeInteger(from) || from < 0) throw new LedgerError('INVALID_ARGUMENT', `read from ${from} is not an entry index`, { org });
    if (!orgLog || from >= end) return;
    const segments = orgLog.segments.filter((s) => s.firstIndex + s.entryCount > from && s.firstIndex < end);
    let buffer = Buffer.allocUnsafe(READ_CHUNK_BYTES);
    for (const segment of segments) {
      const limit = segment.length; // never read past what was durable when the segment was listed
      const file = await open(segment.path, 'r');
      try {
        let position = SEGMENT_HEADER_BYTES;
        let index = segment.firstIndex;
        let filled = 0;
        while (position < limit && index < end) {
          const { bytesRead } = await file.read(buffer, filled, Math.min(buffer.length - filled, limit - position), position);
          if (bytesRead === 0) break;
          position += bytesRead;
          filled += bytesRead;
          const batch: T[] = [];
          let offset = 0;
          while (filled - offset >= RECORD_HEADER_BYTES && index < end) {
            const length = buffer.readUInt32BE(offset);
            if (filled - offset < RECORD_HEADER_BYTES + length) break;
            if (index >= from) batch.push(decode(buffer, offset + RECORD_HEADER_BYTES, offset + RECORD_HEADER_BYTES + length, index));
            index++;
            offset += RECORD_HEADER_BYTES + length;
          }
          buffer.copy(buffer, 0, offset, filled);
          filled -= offset;
          if (filled === buffer.length) {
            const bigger = Buffer.allocUnsafe(buffer.length * 2);
            buffer.copy(bigger, 0, 0, filled);
            buffer = bigger;
          }
          if (batch.length > 0) yield batch;
        }
      } finally {
        await file.close();
      }
    }
  }

  /** A signed checkpoint for the organization's current size, persisted in its checkpoint history. */
  async checkpoint(org: string): Promise<string> {
    assertOrganization(org);
    const orgLog = await this.orgLog(org);
    return orgLog.checkpoint();
  }

  /** The C2SP verifier key (`name+keyid+base64`) that verifies every checkpoint of this ledger. */
  verifierKey(): string {
    return verifierKeyString(this.signer);
  }

  /** Checkpoint origin of an organization's log. */
  origin(org: string): string {
    assertOrganization(org);
    return `${this.meta.originPrefix}${org}`;
  }

  inclusionProof(org: string, index: number, treeSize?: number): InclusionProof {
    const orgLog = this.requireLog(org);
    const size = treeSize ?? orgLog.tree.size;
    return { leafIndex: index, treeSize: size, hashes: orgLog.tree.inclusionProof(index, size).map((h) => h.toString('base64')) };
  }

  consistencyProof(org: string, from: number, to: number): ConsistencyProof {
    const orgLog = this.requireLog(org);
    return { from, to, hashes: orgLog.tree.consistencyProof(from, to).map((h) => h.toString('base64')) };
  }

  /** Base64 leaf hash of entry `index`, for clients that check an inclusion proof against an entry they hold. */
  leafHash(org: string, index: number): string {
    return this.requireLog(org).tree.leaf(index).toString('base64');
  }

  private requireLog(org: string): OrgLog {
    const orgLog = this.existing(org);
    if (!orgLog) throw new LedgerError('INVALID_ARGUMENT', `organization ${org} has no entries`, { org });
    return orgLog;
  }

  /**
   * One archive pass: seals active segments whose first entry is older than half the archive bound, then copies
   * every sealed segment not yet archived. Runs on a timer; `force` seals every non-empty active segment now.
   */
  archive(options: { force?: boolean } = {}): Promise<void> {
    const target = this.archiveTarget;
    if (!target) return Promise.resolve();
    const maxDelay = this.options.archive?.maxDelayMs ?? DEFAULT_ARCHIVE_DELAY_MS;
    const run = this.archiving.then(async () => {
      for (const orgLog of this.ready.values()) {
        await orgLog.sealIfOlderThan(options.force ? 0 : maxDelay / 2);
        await archiveSealedSegments(orgLog, target, this.signer, log);
      }
    });
    this.archiving = run.catch(() => undefined);
    return run;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const timer of this.timers) clearInterval(timer);
    await this.archiving;
    try {
      for (const orgLog of this.ready.values()) {
        await orgLog.close();
        if (orgLog.tree.size !== orgLog.checkpointedSize) await orgLog.checkpoint();
      }
    } finally {
      await this.unlock();
    }
  }
}
