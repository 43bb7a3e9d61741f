import { availableParallelism } from 'node:os';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { openCheckpoint, type Checkpoint } from './checkpoint.ts';
import { LedgerError, type LedgerErrorCode } from './errors.ts';
import { ARCHIVE_VERIFIER_KEY, archiveTargetOf, manifestKey, sha256Hex, type ArchiveTarget, type SegmentManifest } from './archive.ts';
import { loadVerifier, readLedgerMeta, VERIFIER_KEY_FILE } from './keys.ts';
import { CompactRange, HASH_SIZE, leafHashes } from './merkle.ts';
import { ScanPool } from './scan-pool.ts';
import type { ScannedSegment } from './scan-worker.ts';
import { parseVerifierKey, type NoteVerifier } from './note.ts';
import { CHECKPOINT_HISTORY, readCheckpointHistory } from './org-log.ts';
import { scanSegmentBytes, segmentFirstIndex, type RecordProblem } from './segment.ts';

/** Each worker thread costs about a quarter of a second of CPU to start (it loads the sources through tsx). */
const PARALLEL_FROM = 500_000;

export interface VerifyOptions {
  onProgress?: (done: number, total: number) => void;
  /** Verifier key string or a file holding one; default: the key stored beside the data (trust it only if you trust the directory). */
  verifierKey?: string;
  /**
   * Worker threads that hash segments of a data dir in parallel (0 scans in process). Default: one per core when
   * the checkpoints name at least `PARALLEL_FROM` entries; below that, starting the threads costs more than they save.
   */
  workers?: number;
}

export interface VerifyFailure {
  code: LedgerErrorCode;
  message: string;
  org?: string;
  segment?: string;
  entryIndex?: number;
}

export interface OrganizationReport {
  org: string;
  entries: number;
  segments: number;
  checkpoints: number;
  treeSize: number;
  rootHash: string;
}

export interface VerifyReport {
  ok: boolean;
  source: 'data' | 'archive';
  /** The directory verified, or the archive target's `describe()`. */
  dir: string;
  entries: number;
  organizations: OrganizationReport[];
  failure?: VerifyFailure;
  warnings: string[];
}

/**
 * Recomputes every leaf and root of every organization's log in a data dir and checks them against every signed
 * checkpoint the dir holds, so a flipped byte, a deleted or reordered entry, a log truncated below a checkpoint
 * and a forged checkpoint are each reported with the first organization, segment and entry they touch.
 */
export async function verifyDataDir(dir: string, options: VerifyOptions = {}): Promise<VerifyReport> {
  const report: VerifyReport = { ok: true, source: 'data', dir, entries: 0, organizations: [], warnings: [] };
  try {
    const meta = await readLedgerMeta(dir);
    if (!meta) throw new LedgerError('MISSING_FILE', `${dir} is not a Custos data dir (no ledger.json)`);
    const verifier = await loadVerifier(options.verifierKey ?? join(dir, VERIFIER_KEY_FILE));
    const orgs = (await readdir(join(dir, 'orgs'), { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name).sort();
    const histories = new Map<string, Checkpoint[]>();
    let total = 0;
    for (const org of orgs) {
      const checkpoints = await verifiedHistory(join(dir, 'orgs', org), org, verifier, `${meta.originPrefix}${org}`, report);
      histories.set(org, checkpoints);
      total += checkpoints.at(-1)?.treeSize ?? 0;
    }
    const progress = progressReporter(options, report, () => Math.max(total, report.entries));
    const pool = new ScanPool(options.workers ?? (total >= PARALLEL_FROM ? availableParallelism() : 0));
    try {
      for (const org of orgs) {
        report.organizations.push(await verifyOrgDir(join(dir, 'orgs', org), org, histories.get(org) ?? [], report, progress, pool));
      }
    } finally {
      await pool.close();
    }
    progress();
  } catch (err) {
    fail(report, err);
  }
  return report;
}

async function verifiedHistory(orgDir: string, org: string, verifier: NoteVerifier, origin: string, report: VerifyReport): Promise<Checkpoint[]> {
  const { notes, tornTail } = await readCheckpointHistory(join(orgDir, CHECKPOINT_HISTORY)).catch((err: unknown) => {
    if (err instanceof LedgerError) throw new LedgerError(err.code, `${org}: ${err.message}`, { org, segment: CHECKPOINT_HISTORY });
    throw err;
  });
  if (tornTail) report.warnings.push(`${org}: checkpoint history ends in a torn line (ignored)`);
  const checkpoints: Checkpoint[] = [];
  for (let i = 0; i < notes.length; i++) {
    try {
      checkpoints.push(openCheckpoint(notes[i] as string, verifier, origin));
    } catch (err) {
      if (err instanceof LedgerError) throw new LedgerError(err.code, `${org}: checkpoint ${i + 1} of ${CHECKPOINT_HISTORY}: ${err.message}`, { org, segment: CHECKPOINT_HISTORY });
      throw err;
    }
  }
  return checkpoints.sort((a, b) => a.treeSize - b.treeSize);
}

async function verifyOrgDir(orgDir: string, org: string, checkpoints: Checkpoint[], report: VerifyReport, progress: () => void, pool: ScanPool): Promise<OrganizationReport> {
  const segmentsDir = join(orgDir, 'segments');
  const names = (await readdir(segmentsDir).catch(() => [] as string[])).filter((n) => segmentFirstIndex(n) !== undefined).sort();
  const checker = new CheckpointChecker(org, checkpoints);
  const boundaries = [...new Set(checkpoints.map((c) => c.treeSize))];
  const log = new CompactRange(0);
  // Segments are hashed ahead on the pool; their ranges join the log strictly in order.
  const ahead = 4;
  const scans: Promise<ScannedSegment>[] = [];
  const schedule = (i: number): void => {
    const name = names[i];
    if (name !== undefined && scans[i] === undefined) {
      const scan = pool.scan(join(segmentsDir, name), segmentFirstIndex(name) as number, boundaries);
      scan.catch(() => undefined);
      scans[i] = scan;
    }
  };
  for (let i = 0; i < ahead; i++) schedule(i);
  for (let i = 0; i < names.length; i++) {
    const name = names[i] as string;
    const { scan, count, ranges } = await (scans[i] as Promise<ScannedSegment>);
    schedule(i + ahead);
    const firstIndex = segmentFirstIndex(name) as number;
    if (firstIndex !== log.end) {
      throw new LedgerError('SEQUENCE_GAP', `${org}/${name}: segment starts at entry ${firstIndex} but the log so far holds ${log.end}`, { org, segment: name, entryIndex: log.end });
    }
    checker.segment(name, log.end);
    for (const range of ranges) {
      log.appendRange(range.nodes.map((node) => ({ level: node.level, hash: Buffer.from(node.hash) })));
      checker.reached(log);
    }
    report.entries += count;
    progress();
    if (scan.problem) {
      const tornTail = i === names.length - 1 && scan.problem.incomplete && scan.problem.index >= checker.maxSize;
      if (!tornTail) throw recordFailure(org, name, scan.problem);
      report.warnings.push(`${org}/${name}: torn tail at byte ${scan.problem.offset} after entry ${scan.problem.index - 1} (never acknowledged; cut on next start)`);
    }
  }
  checker.finish(log.end, names.at(-1));
  return { org, entries: log.end, segments: names.length, checkpoints: checkpoints.length, treeSize: log.end, rootHash: log.root().toString('base64') };
}

function recordFailure(org: string, segment: string, problem: RecordProblem): LedgerError {
  return new LedgerError(problem.code, `${org}/${segment} at byte ${problem.offset}: ${problem.reason}`, { org, segment, entryIndex: problem.index });
}

/** Compares the growing tree with each signed checkpoint as the tree reaches its size. */
class CheckpointChecker {
  private next = 0;
  private verifiedSize = 0;
  private readonly segmentStarts: { name: string; firstIndex: number }[] = [];

  constructor(
    private readonly org: string,
    private readonly checkpoints: Checkpoint[],
  ) {
    this.skipEmpty();
  }

  get maxSize(): number {
    return this.checkpoints.at(-1)?.treeSize ?? 0;
  }

  segment(name: string, firstIndex: number): void {
    this.segmentStarts.push({ name, firstIndex });
  }

  private skipEmpty(): void {
    while (this.checkpoints[this.next]?.treeSize === 0) this.next++;
  }

  /** Checks every checkpoint for the size `log` has reached (checkpoint sizes are range boundaries). */
  reached(log: CompactRange): void {
    let checkpoint = this.checkpoints[this.next];
    while (checkpoint !== undefined && checkpoint.treeSize === log.end) {
      if (!log.root().equals(checkpoint.rootHash)) {
        throw new LedgerError('ROOT_MISMATCH', `${this.org}: entries ${this.verifiedSize}..${log.end - 1} do not hash to the root signed in the checkpoint at size ${log.end}`, {
          org: this.org, segment: this.segmentHolding(this.verifiedSize), entryIndex: this.verifiedSize,
        });
      }
      this.verifiedSize = log.end;
      checkpoint = this.checkpoints[++this.next];
    }
  }

  finish(size: number, lastSegment: string | undefined): void {
    if (this.maxSize > size) {
      throw new LedgerError('TRUNCATED_LOG', `${this.org}: the log holds ${size} entries but a signed checkpoint commits to ${this.maxSize}`, {
        org: this.org, ...(lastSegment === undefined ? {} : { segment: lastSegment }), entryIndex: size,
      });
    }
  }

  private segmentHolding(index: number): string | undefined {
    let holder: string | undefined;
    for (const start of this.segmentStarts) if (start.firstIndex <= index) holder = start.name;
    return holder;
  }
}

/**
 * Verifies an archive (a directory path or any `ArchiveTarget`): for every organization, the manifest chain (each
 * manifest names the SHA-256 of the one before, and segments follow each other without gap), each object's hashes,
 * every entry's leaf, and the root and signed checkpoint each manifest commits to.
 */
export async function verifyArchive(archive: string | ArchiveTarget, options: VerifyOptions = {}): Promise<VerifyReport> {
  const report: VerifyReport = { ok: true, source: 'archive', dir: typeof archive === 'string' ? archive : archive.describe(), entries: 0, organizations: [], warnings: [] };
  try {
    if (typeof archive === 'string') {
      await stat(archive).catch(() => {
        throw new LedgerError('MISSING_FILE', `archive directory ${archive} not found`);
      });
    }
    const target = archiveTargetOf(archive);
    const verifier = options.verifierKey !== undefined ? await loadVerifier(options.verifierKey) : await archiveVerifier(target);
    const orgs = (await target.listPrefixes('')).map((prefix) => prefix.slice(0, -1));
    const manifestsByOrg = new Map<string, { key: string; bytes: Buffer; manifest: SegmentManifest }[]>();
    let total = 0;
    for (const org of orgs) {
      const manifests = [];
      for (const key of await target.list(`${org}/manifests/`)) {
        const bytes = (await target.get(key)) as Buffer;
        const manifest = parseManifest(bytes);
        if (!manifest) throw new LedgerError('CHAIN_BROKEN', `${key} is not a segment manifest`, { org, segment: key });
        manifests.push({ key, bytes, manifest });
        total += manifest.segment.entryCount;
      }
      manifestsByOrg.set(org, manifests);
    }
    const progress = progressReporter(options, report, () => Math.max(total, report.entries));
    for (const org of orgs) {
      report.organizations.push(await verifyArchivedOrg(target, org, manifestsByOrg.get(org) ?? [], verifier, report, progress));
    }
    progress();
  } catch (err) {
    fail(report, err);
  }
  return report;
}

/** The manifest in `bytes` if it has every field verification reads (archives are untrusted input). */
function parseManifest(bytes: Buffer): SegmentManifest | undefined {
  let value: Partial<SegmentManifest>;
  try {
    value = JSON.parse(bytes.toString('utf8')) as Partial<SegmentManifest>;
  } catch {
    return undefined;
  }
  const segment = value.segment;
  const wellFormed = typeof value.organization === 'string' && typeof value.origin === 'string' && typeof value.checkpoint === 'string'
    && Number.isSafeInteger(value.treeSize) && typeof value.rootHash === 'string' && (value.previousManifestSha256 === null || typeof value.previousManifestSha256 === 'string')
    && typeof segment === 'object' && segment !== null && typeof segment.key === 'string' && typeof segment.name === 'string'
    && typeof segment.sha256 === 'string' && typeof segment.objectSha256 === 'string' && Number.isSafeInteger(segment.firstIndex) && Number.isSafeInteger(segment.entryCount);
  return wellFormed ? (value as SegmentManifest) : undefined;
}

async function archiveVerifier(target: ArchiveTarget): Promise<NoteVerifier> {
  const key = await target.get(ARCHIVE_VERIFIER_KEY);
  if (!key) throw new LedgerError('MISSING_FILE', `archive has no ${ARCHIVE_VERIFIER_KEY}; pass the ledger's verifier key`);
  return parseVerifierKey(key.toString('utf8'));
}

async function verifyArchivedOrg(
  target: ArchiveTarget, org: string, manifests: { key: string; bytes: Buffer; manifest: SegmentManifest }[], verifier: NoteVerifier, report: VerifyReport, progress: () => void,
): Promise<OrganizationReport> {
  const tree = new CompactRange(0);
  let previousSha256: string | null = null;
  const fault = (code: LedgerErrorCode, message: string, segment: string, entryIndex?: number): LedgerError =>
    new LedgerError(code, `${org}/${segment}: ${message}`, { org, segment, ...(entryIndex === undefined ? {} : { entryIndex }) });
  for (const { key, bytes, manifest } of manifests) {
    const name = manifest.segment.name;
    if (manifest.organization !== org || key !== manifestKey(org, name)) throw fault('CHAIN_BROKEN', `manifest ${key} does not belong at this place`, name, tree.end);
    if (manifest.previousManifestSha256 !== previousSha256) {
      throw fault('CHAIN_BROKEN', `manifest names previous manifest ${manifest.previousManifestSha256 ?? 'none'} but the one before it hashes to ${previousSha256 ?? 'none'}`, name, tree.end);
    }
    if (manifest.segment.firstIndex !== tree.end) throw fault('CHAIN_BROKEN', `segment starts at entry ${manifest.segment.firstIndex}, expected ${tree.end}`, name, tree.end);
    const object = await target.get(manifest.segment.key);
    if (!object) throw fault('MISSING_FILE', `archived object ${manifest.segment.key} is missing`, name, tree.end);
    if (sha256Hex(object) !== manifest.segment.objectSha256) throw fault('HASH_MISMATCH', 'compressed object does not match its manifest hash', name, tree.end);
    let segmentBytes: Buffer;
    try {
      segmentBytes = gunzipSync(object);
    } catch (err) {
      throw fault('HASH_MISMATCH', `object does not decompress: ${(err as Error).message}`, name, tree.end);
    }
    if (sha256Hex(segmentBytes) !== manifest.segment.sha256) throw fault('HASH_MISMATCH', 'segment bytes do not match the manifest hash', name, tree.end);
    const firstIndex = tree.end;
    const { problem } = scanSegmentBytes(segmentBytes, firstIndex, {
      run: (chunk, payloads, count) => {
        const leaves = leafHashes(chunk, payloads, count);
        for (let i = 0; i < count; i++) tree.appendLeaf(leaves.subarray(i * HASH_SIZE, (i + 1) * HASH_SIZE));
        report.entries += count;
        progress();
      },
    });
    if (problem) throw fault(problem.code, problem.reason, name, problem.index);
    if (tree.end !== manifest.treeSize || tree.end - firstIndex !== manifest.segment.entryCount) {
      throw fault('TRUNCATED_LOG', `segment holds ${tree.end - firstIndex} entries ending at size ${tree.end}, manifest says ${manifest.segment.entryCount} ending at ${manifest.treeSize}`, name, tree.end);
    }
    let checkpoint: Checkpoint;
    try {
      checkpoint = openCheckpoint(manifest.checkpoint, verifier, manifest.origin);
    } catch (err) {
      throw fault((err as LedgerError).code ?? 'BAD_CHECKPOINT', `manifest checkpoint: ${(err as Error).message}`, name, firstIndex);
    }
    const root = tree.root();
    if (checkpoint.treeSize !== tree.end || !checkpoint.rootHash.equals(root) || manifest.rootHash !== root.toString('base64')) {
      throw fault('ROOT_MISMATCH', `entries ${firstIndex}..${tree.end - 1} do not hash to the root in the manifest and its signed checkpoint`, name, firstIndex);
    }
    previousSha256 = sha256Hex(bytes);
  }
  return { org, entries: tree.end, segments: manifests.length, checkpoints: manifests.length, treeSize: tree.end, rootHash: tree.root().toString('base64') };
}

function progressReporter(options: VerifyOptions, report: VerifyReport, total: () => number): () => void {
  return () => options.onProgress?.(report.entries, total());
}

function fail(report: VerifyReport, err: unknown): void {
  report.ok = false;
  if (err instanceof LedgerError) {
    report.failure = {
      code: err.code, message: err.message,
      ...(err.org === undefined ? {} : { org: err.org }),
      ...(err.segment === undefined ? {} : { segment: err.segment }),
      ...(err.entryIndex === undefined ? {} : { entryIndex: err.entryIndex }),
    };
  } else {
    report.failure = { code: 'IO_ERROR', message: (err as Error).message };
  }
}
