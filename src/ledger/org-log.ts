import { mkdir, open, readdir, readFile, truncate, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { openCheckpoint, signCheckpoint, type Checkpoint } from './checkpoint.ts';
import { LedgerError } from './errors.ts';
import { syncDirectory, writeFileDurably } from './fsutil.ts';
import { MerkleTree } from './merkle.ts';
import { ledgerMetrics } from './metrics.ts';
import type { NoteSigner } from './note.ts';
import type { ScanPool } from './scan-pool.ts';
import { RecordBatch, encodeSegmentHeader, segmentFileName, segmentFirstIndex, SEGMENT_HEADER_BYTES } from './segment.ts';
import type { ScannedLeaves } from './scan-worker.ts';

export interface SegmentInfo {
  name: string;
  path: string;
  firstIndex: number;
  entryCount: number;
  /** Bytes of the file that hold good records (the file is never longer once recovered). */
  length: number;
  createdMs: number;
}

export interface ArchiveState {
  /** Entries [0, archivedThrough) are in the archive. */
  archivedThrough: number;
  previousManifestSha256: string | null;
}

interface PendingAppend {
  batch: RecordBatch;
  resolve: (result: { firstIndex: number; treeSize: number }) => void;
  reject: (error: unknown) => void;
}

export interface OrgLogOptions {
  groupCommitMs: number;
  segmentMaxBytes: number;
  signer: NoteSigner;
  origin: string;
  logger: Logger;
}

export const CHECKPOINT_HISTORY = 'checkpoints.log';
export const ARCHIVE_STATE = 'archive.json';
export const TREE_DIR = 'tree';

/**
 * Reads the checkpoint history: one JSON string (a signed note) per line. A last line without its newline is a
 * torn write (reported, not returned); `goodLength` is where it starts.
 */
export async function readCheckpointHistory(path: string): Promise<{ notes: string[]; tornTail: boolean; goodLength: number }> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { notes: [], tornTail: false, goodLength: 0 };
    throw err;
  }
  const goodLength = bytes.lastIndexOf(0x0a) + 1;
  const lines = bytes.toString('utf8', 0, goodLength).split('\n').slice(0, -1);
  const notes = lines.map((line, i) => {
    try {
      const note: unknown = JSON.parse(line);
      if (typeof note === 'string') return note;
    } catch {
      // reported below
    }
    throw new LedgerError('BAD_CHECKPOINT', `${path} line ${i + 1} is not a JSON string holding a signed note`, { segment: CHECKPOINT_HISTORY });
  });
  return { notes, tornTail: goodLength < bytes.length, goodLength };
}

/**
 * One organization's append-only log: its segment files, its Merkle tree and its checkpoints. Appends are queued
 * and written by one group commit at a time (one write and one fdatasync for every append waiting), and the tree
 * only grows once the bytes are durable, so a failed write leaves nothing half-applied.
 */
export class OrgLog {
  private readonly merkle: MerkleTree;
  /** Entries written and synced. The tree may lag behind by the last group commit (see `growTree`). */
  private durableSize = 0;
  /** Leaf hashes of durable groups not yet in the tree, in order. */
  private readonly treeBacklog: { leaves: Buffer; count: number }[] = [];
  private treeGrowthScheduled = false;
  readonly segments: SegmentInfo[] = [];
  private active: { info: SegmentInfo; file: FileHandle } | undefined;
  private pending: PendingAppend[] = [];
  private flushScheduled = false;
  private exclusive: Promise<void> = Promise.resolve();
  private needsTruncate = false;
  private closed = false;
  private latest: { note: string; treeSize: number } | undefined;
  private checkpointChain: Promise<unknown> = Promise.resolve();
  archiveState: ArchiveState = { archivedThrough: 0, previousManifestSha256: null };

  private constructor(
    readonly org: string,
    readonly dir: string,
    private readonly options: OrgLogOptions,
  ) {
    // The stored tree levels go to files as they fill, so memory does not grow with the log; they are rebuilt from the
    // segments at every open.
    this.merkle = new MerkleTree({ spillDir: join(dir, TREE_DIR) });
  }

  /** The Merkle tree of every durable entry; whoever reads it first brings it up to date. */
  get tree(): MerkleTree {
    this.growTree();
    return this.merkle;
  }

  /**
   * Adds the backlog of durable groups to the tree. A group commit leaves its leaves here and resolves its appends,
   * and the next group commit grows the tree once its own write is on its way, so the tree's hashing overlaps that
   * write instead of delaying it; any reader of the tree, or a later turn of the event loop, does it first.
   */
  private growTree(): void {
    while (this.treeBacklog.length > 0) {
      const { leaves, count } = this.treeBacklog[0] as { leaves: Buffer; count: number };
      this.merkle.appendLeaves(leaves, count);
      this.treeBacklog.shift();
    }
  }

  /** `growTree` where its failure is not the caller's: the backlog stays, and the next reader of the tree meets it. */
  private growTreeOrLog(): void {
    try {
      this.growTree();
    } catch (err) {
      this.options.logger.error({ org: this.org, err }, 'could not grow the Merkle tree');
    }
  }

  private scheduleTreeGrowth(): void {
    if (this.treeGrowthScheduled) return;
    this.treeGrowthScheduled = true;
    // Two turns: the callers just resolved append again in this one, and their group commit should start first.
    setImmediate(() => setImmediate(() => {
      this.treeGrowthScheduled = false;
      this.growTreeOrLog();
    }));
  }

  get origin(): string {
    return this.options.origin;
  }

  get segmentsDir(): string {
    return join(this.dir, 'segments');
  }

  static async create(org: string, dir: string, options: OrgLogOptions): Promise<OrgLog> {
    const log = new OrgLog(org, dir, options);
    await mkdir(log.segmentsDir, { recursive: true });
    await mkdir(join(dir, TREE_DIR), { recursive: true });
    await syncDirectory(dir);
    await syncDirectory(join(dir, '..'));
    return log;
  }

  /** Loads an existing log: rebuilds the tree from the segments, cuts a torn tail, checks the latest checkpoint. */
  static async open(org: string, dir: string, options: OrgLogOptions, pool: ScanPool): Promise<OrgLog> {
    const log = await OrgLog.create(org, dir, options);
    const historyPath = join(dir, CHECKPOINT_HISTORY);
    const { notes, tornTail, goodLength } = await readCheckpointHistory(historyPath);
    if (tornTail) {
      // the next checkpoint must start on a line of its own
      await truncate(historyPath, goodLength);
      options.logger.warn({ org }, 'checkpoint history ended in a torn line; cut it');
    }
    const lastNote = notes.at(-1);
    const lastCheckpoint: Checkpoint | undefined = lastNote === undefined ? undefined : openCheckpoint(lastNote, options.signer, options.origin);
    if (lastNote !== undefined && lastCheckpoint !== undefined) log.latest = { note: lastNote, treeSize: lastCheckpoint.treeSize };
    try {
      log.archiveState = JSON.parse(await readFile(join(dir, ARCHIVE_STATE), 'utf8')) as ArchiveState;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }

    const names = (await readdir(log.segmentsDir)).filter((name) => segmentFirstIndex(name) !== undefined).sort();
    // Segments are hashed ahead (on worker threads for large logs); leaves join the tree strictly in order.
    const ahead = 4;
    const scans: Promise<ScannedLeaves>[] = [];
    const schedule = (i: number): void => {
      const name = names[i];
      if (name === undefined || scans[i] !== undefined) return;
      const scan = pool.leaves(join(log.segmentsDir, name), segmentFirstIndex(name) as number);
      scan.catch(() => undefined);
      scans[i] = scan;
    };
    for (let i = 0; i < ahead; i++) schedule(i);
    for (let i = 0; i < names.length; i++) {
      const name = names[i] as string;
      const path = join(log.segmentsDir, name);
      const isLast = i === names.length - 1;
      const firstIndex = log.merkle.size;
      const { scan, count, leaves } = await (scans[i] as Promise<ScannedLeaves>);
      schedule(i + ahead);
      if (segmentFirstIndex(name) !== firstIndex) {
        throw new LedgerError('SEQUENCE_GAP', `${org}/${name}: segment starts at entry ${segmentFirstIndex(name)} but the log so far holds ${firstIndex}; run custos verify`, { org, segment: name, entryIndex: firstIndex });
      }
      log.merkle.appendLeaves(Buffer.from(leaves.buffer, leaves.byteOffset, leaves.byteLength), count);
      if (scan.problem) {
        const checkpointed = lastCheckpoint?.treeSize ?? 0;
        // Only the shape a crash leaves (the file ends inside the last record) past every checkpoint is cut.
        if (!isLast || !scan.problem.incomplete || scan.problem.index < checkpointed) {
          throw new LedgerError(scan.problem.code, `${org}/${name} at byte ${scan.problem.offset}: ${scan.problem.reason}; run custos verify`, { org, segment: name, entryIndex: scan.problem.index });
        }
        await log.cutTornTail(path, name, scan.validLength, scan.fileLength, scan.problem.reason);
        if (scan.validLength < SEGMENT_HEADER_BYTES) continue;
      }
      log.segments.push({ name, path, firstIndex, entryCount: scan.nextIndex - firstIndex, length: scan.validLength, createdMs: scan.header?.createdMs ?? Date.now() });
    }
    if (lastCheckpoint) {
      if (lastCheckpoint.treeSize > log.tree.size) {
        throw new LedgerError('TRUNCATED_LOG', `${org} holds ${log.tree.size} entries but its checkpoint commits to ${lastCheckpoint.treeSize}; run custos verify`, { org, entryIndex: log.tree.size });
      }
      if (!log.tree.root(lastCheckpoint.treeSize).equals(lastCheckpoint.rootHash)) {
        throw new LedgerError('ROOT_MISMATCH', `${org}: entries do not match the checkpoint at size ${lastCheckpoint.treeSize}; run custos verify`, { org });
      }
    }
    log.durableSize = log.merkle.size;
    const last = log.segments.at(-1);
    if (last && last.firstIndex >= log.archiveState.archivedThrough) {
      log.active = { info: last, file: await open(last.path, 'r+') };
    }
    return log;
  }

  /** A crash can leave the last segment ending inside a record that was never acknowledged: keep its bytes aside, cut it. */
  private async cutTornTail(path: string, name: string, validLength: number, fileLength: number, reason: string): Promise<void> {
    const file = await open(path, 'r+');
    try {
      const tail = Buffer.alloc(fileLength - validLength);
      await file.read(tail, 0, tail.length, validLength);
      await writeFileDurably(`${path}.torn-${validLength}`, tail);
      await file.truncate(validLength);
      await file.sync();
    } finally {
      await file.close();
    }
    if (validLength < SEGMENT_HEADER_BYTES) {
      await unlink(path);
      await syncDirectory(this.segmentsDir);
    }
    this.options.logger.warn({ org: this.org, segment: name, offset: validLength, droppedBytes: fileLength - validLength, reason }, 'cut torn tail of segment after crash');
  }

  append(batch: RecordBatch): Promise<{ firstIndex: number; treeSize: number }> {
    if (this.closed) return Promise.reject(new LedgerError('CLOSED', `${this.org}: log is closed`, { org: this.org }));
    return new Promise((resolve, reject) => {
      this.pending.push({ batch, resolve, reject });
      this.scheduleFlush();
    });
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    const run = (): void => {
      this.flushScheduled = false;
      void this.serially(() => this.flush());
    };
    if (this.options.groupCommitMs > 0) setTimeout(run, this.options.groupCommitMs);
    else setImmediate(run);
  }

  /** Runs `task` after every earlier exclusive task (flushes, seals, close) has finished. */
  serially<T>(task: () => Promise<T>): Promise<T> {
    const result = this.exclusive.then(task);
    this.exclusive = result.then(() => undefined, () => undefined);
    return result;
  }

  private async flush(): Promise<void> {
    const pending = this.pending;
    this.pending = [];
    if (pending.length === 0) return;
    const firstIndex = this.durableSize;
    const buffers: Buffer[] = [];
    let entries = 0;
    let bytes = 0;
    for (const { batch } of pending) {
      const records = batch.number(firstIndex + entries);
      buffers.push(records);
      entries += batch.count;
      bytes += records.length;
    }
    let segment: { info: SegmentInfo; file: FileHandle } | undefined;
    const stopTimer = ledgerMetrics.commitSeconds.startTimer();
    try {
      segment = await this.segmentFor(bytes);
      if (this.needsTruncate) {
        await segment.file.truncate(segment.info.length);
        this.needsTruncate = false;
      }
      const writing = segment.file.writev(buffers, segment.info.length);
      this.growTreeOrLog();
      const { bytesWritten } = await writing;
      if (bytesWritten < bytes) {
        const rest = Buffer.concat(buffers).subarray(bytesWritten);
        for (let written = 0; written < rest.length;) {
          written += (await segment.file.write(rest, written, rest.length - written, segment.info.length + bytesWritten + written)).bytesWritten;
        }
      }
      await segment.file.datasync();
    } catch (err) {
      if (segment) {
        this.needsTruncate = true;
        await segment.file.truncate(segment.info.length).then(() => { this.needsTruncate = false; }, () => undefined);
      }
      ledgerMetrics.commitErrors.inc();
      const error = new LedgerError('IO_ERROR', `${this.org}: could not make ${entries} entries durable: ${(err as Error).message}`, { org: this.org, cause: err });
      this.options.logger.error({ org: this.org, err }, 'append failed; nothing of the batch was acknowledged');
      for (const item of pending) item.reject(error);
      return;
    }
    stopTimer();
    ledgerMetrics.commits.inc();
    ledgerMetrics.entries.inc(entries);
    segment.info.length += bytes;
    segment.info.entryCount += entries;
    this.durableSize = firstIndex + entries;
    // Each batch was hashed while it was written (see RecordBatch.hashLeaves); the tree takes the hashes later.
    for (const { batch } of pending) await batch.hashLeaves();
    let index = firstIndex;
    for (const { batch, resolve } of pending) {
      const count = batch.count;
      this.treeBacklog.push({ leaves: batch.leafHashes(), count });
      batch.recycle();
      resolve({ firstIndex: index, treeSize: firstIndex + entries });
      index += count;
    }
    this.scheduleTreeGrowth();
  }

  /** The segment the next `bytes` go to: the active one, or a new one once the active one is full or sealed. */
  private async segmentFor(bytes: number): Promise<{ info: SegmentInfo; file: FileHandle }> {
    if (this.active && this.active.info.length > SEGMENT_HEADER_BYTES && this.active.info.length + bytes > this.options.segmentMaxBytes) {
      await this.sealActive();
    }
    if (this.active) return this.active;
    const firstIndex = this.durableSize;
    const name = segmentFileName(firstIndex);
    const path = join(this.segmentsDir, name);
    const createdMs = Date.now();
    const file = await open(path, 'w+');
    try {
      const header = encodeSegmentHeader({ firstIndex, createdMs });
      await file.write(header, 0, header.length, 0);
      await file.datasync();
      await syncDirectory(this.segmentsDir);
    } catch (err) {
      await file.close().catch(() => undefined);
      await unlink(path).catch(() => undefined);
      throw err;
    }
    const info: SegmentInfo = { name, path, firstIndex, entryCount: 0, length: SEGMENT_HEADER_BYTES, createdMs };
    this.segments.push(info);
    this.active = { info, file };
    return this.active;
  }

  private async sealActive(): Promise<void> {
    const active = this.active;
    if (!active) return;
    this.active = undefined;
    await active.file.close();
  }

  /** Seals the active segment if it has entries and its first entry is older than `ageMs` (archive bound). */
  sealIfOlderThan(ageMs: number, now = Date.now()): Promise<void> {
    return this.serially(async () => {
      if (this.active && this.active.info.entryCount > 0 && now - this.active.info.createdMs >= ageMs) await this.sealActive();
    });
  }

  /** Segments that no longer take appends, in order. */
  sealedSegments(): SegmentInfo[] {
    return this.active ? this.segments.slice(0, -1) : this.segments.slice();
  }

  /** Locates the segment holding entry `index`. */
  segmentOf(index: number): SegmentInfo | undefined {
    let low = 0;
    let high = this.segments.length - 1;
    while (low <= high) {
      const middle = (low + high) >> 1;
      const segment = this.segments[middle] as SegmentInfo;
      if (index < segment.firstIndex) high = middle - 1;
      else if (index >= segment.firstIndex + segment.entryCount) low = middle + 1;
      else return segment;
    }
    return undefined;
  }

  /** A signed checkpoint for the current size; signs and persists a new one only when the tree grew. */
  checkpoint(): Promise<string> {
    const next = this.checkpointChain.then(async () => {
      const treeSize = this.tree.size;
      if (this.latest && this.latest.treeSize === treeSize) return this.latest.note;
      const note = this.sign(treeSize);
      const history = await open(join(this.dir, CHECKPOINT_HISTORY), 'a');
      try {
        await history.write(`${JSON.stringify(note)}\n`);
        await history.datasync();
      } finally {
        await history.close();
      }
      this.latest = { note, treeSize };
      ledgerMetrics.checkpoints.inc();
      return note;
    });
    this.checkpointChain = next.catch(() => undefined);
    return next;
  }

  /** Signs (without persisting) the checkpoint for any size up to the current one. */
  sign(treeSize: number): string {
    return signCheckpoint({ origin: this.options.origin, treeSize, rootHash: this.tree.root(treeSize) }, this.options.signer);
  }

  get checkpointedSize(): number {
    return this.latest?.treeSize ?? 0;
  }

  async saveArchiveState(state: ArchiveState): Promise<void> {
    await writeFileDurably(join(this.dir, ARCHIVE_STATE), JSON.stringify(state));
    this.archiveState = state;
  }

  close(): Promise<void> {
    this.closed = true;
    return this.serially(async () => {
      await this.flush();
      await this.sealActive();
      this.tree.close();
    });
  }
}
