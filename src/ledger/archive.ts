import { hash } from 'node:crypto';
import type { Dirent } from 'node:fs';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { dirname, resolve, sep } from 'node:path';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import type { Logger } from 'pino';
import { canonicalJson } from './canonical.ts';
import { LedgerError } from './errors.ts';
import { writeFileDurably } from './fsutil.ts';
import { ledgerMetrics } from './metrics.ts';
import type { NoteVerifier } from './note.ts';
import { verifierKeyString } from './note.ts';
import type { OrgLog, SegmentInfo } from './org-log.ts';

const gzipAsync = promisify(gzip);

/** Where sealed segments go: a bucket of immutable objects addressed by `/`-separated keys. */
export interface ArchiveTarget {
  /** Stores `body` under `key`; resolves once it is durable. */
  put(key: string, body: Uint8Array): Promise<void>;
  get(key: string): Promise<Buffer | undefined>;
  /** Keys directly under `prefix` (which ends with `/`), sorted. */
  list(prefix: string): Promise<string[]>;
  /** The `/`-ended prefixes directly under `prefix` (`''` or ending with `/`), sorted: how organizations are found. */
  listPrefixes(prefix: string): Promise<string[]>;
  describe(): string;
}

/** Keys come from manifests, which are untrusted input when verifying, so no key may name a parent or an empty part. */
export function assertArchiveKey(key: string): void {
  if (key.split('/').some((part) => part === '' || part === '.' || part === '..')) {
    throw new LedgerError('INVALID_ARGUMENT', `archive key ${JSON.stringify(key)} has an empty, "." or ".." part`);
  }
}

/** A local directory as the bucket (a mounted volume, NFS, or a directory another tool syncs to object storage). */
export class DirectoryArchiveTarget implements ArchiveTarget {
  readonly root: string;

  constructor(root: string) {
    this.root = resolve(root);
  }

  private pathOf(key: string): string {
    assertArchiveKey(key);
    const path = resolve(this.root, key);
    if (!path.startsWith(this.root + sep)) throw new LedgerError('INVALID_ARGUMENT', `archive key ${JSON.stringify(key)} leaves the archive directory`);
    return path;
  }

  private async entriesUnder(prefix: string): Promise<Dirent[]> {
    const base = prefix === '' ? this.root : this.pathOf(prefix.replace(/\/$/, ''));
    try {
      return await readdir(base, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
  }

  async put(key: string, body: Uint8Array): Promise<void> {
    const path = this.pathOf(key);
    await mkdir(dirname(path), { recursive: true });
    await writeFileDurably(path, body);
  }

  async get(key: string): Promise<Buffer | undefined> {
    try {
      return await readFile(this.pathOf(key));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  async list(prefix: string): Promise<string[]> {
    return (await this.entriesUnder(prefix)).filter((d) => d.isFile() && !d.name.includes('.tmp-')).map((d) => prefix + d.name).sort();
  }

  async listPrefixes(prefix: string): Promise<string[]> {
    return (await this.entriesUnder(prefix)).filter((d) => d.isDirectory()).map((d) => `${prefix}${d.name}/`).sort();
  }

  describe(): string {
    return `directory ${this.root}`;
  }
}

/**
 * One per archived segment, CloudTrail digest style: it commits to the segment's bytes, to every entry up to the
 * segment's end through the tree size, root and signed checkpoint, and to the previous manifest by its SHA-256,
 * so removing, reordering or altering any archived segment or manifest breaks the chain.
 */
export interface SegmentManifest {
  version: 1;
  organization: string;
  origin: string;
  segment: {
    key: string;
    name: string;
    /** SHA-256 (hex) of the segment file as written by the ledger. */
    sha256: string;
    /** SHA-256 (hex) of the compressed object in the archive. */
    objectSha256: string;
    bytes: number;
    firstIndex: number;
    lastIndex: number;
    entryCount: number;
    createdAt: string;
  };
  treeSize: number;
  rootHash: string;
  checkpoint: string;
  previousManifestSha256: string | null;
  archivedAt: string;
}

export const ARCHIVE_VERIFIER_KEY = 'verifier.key';
export const manifestKey = (org: string, name: string): string => `${org}/manifests/${name.replace(/\.seg$/, '')}.json`;
export const segmentObjectKey = (org: string, name: string): string => `${org}/segments/${name}.gz`;
export const sha256Hex = (data: Uint8Array): string => hash('sha256', data, 'hex');

/** Copies every sealed, not yet archived segment of `log` to `target`, in order, each with its manifest. */
export async function archiveSealedSegments(log: OrgLog, target: ArchiveTarget, verifier: NoteVerifier, logger: Logger): Promise<number> {
  let archived = 0;
  for (const segment of log.sealedSegments()) {
    if (segment.firstIndex < log.archiveState.archivedThrough || segment.entryCount === 0) continue;
    await archiveSegment(log, segment, target, verifier);
    archived++;
    ledgerMetrics.archivedSegments.inc();
    logger.info({ org: log.org, segment: segment.name, entries: segment.entryCount, target: target.describe() }, 'segment archived');
  }
  return archived;
}

async function archiveSegment(log: OrgLog, segment: SegmentInfo, target: ArchiveTarget, verifier: NoteVerifier): Promise<void> {
  if ((await target.get(ARCHIVE_VERIFIER_KEY)) === undefined) await target.put(ARCHIVE_VERIFIER_KEY, Buffer.from(`${verifierKeyString(verifier)}\n`));
  const bytes = (await readFile(segment.path)).subarray(0, segment.length);
  const object = await gzipAsync(bytes, { level: 6 });
  const treeSize = segment.firstIndex + segment.entryCount;
  const key = segmentObjectKey(log.org, segment.name);
  const manifest: SegmentManifest = {
    version: 1,
    organization: log.org,
    origin: log.origin,
    segment: {
      key,
      name: segment.name,
      sha256: sha256Hex(bytes),
      objectSha256: sha256Hex(object),
      bytes: bytes.length,
      firstIndex: segment.firstIndex,
      lastIndex: treeSize - 1,
      entryCount: segment.entryCount,
      createdAt: new Date(segment.createdMs).toISOString(),
    },
    treeSize,
    rootHash: log.tree.root(treeSize).toString('base64'),
    checkpoint: log.sign(treeSize),
    previousManifestSha256: log.archiveState.previousManifestSha256,
    archivedAt: new Date().toISOString(),
  };
  const manifestBytes = Buffer.from(`${canonicalJson(manifest)}\n`);
  await target.put(key, object);
  await target.put(manifestKey(log.org, segment.name), manifestBytes);
  await log.saveArchiveState({ archivedThrough: treeSize, previousManifestSha256: sha256Hex(manifestBytes) });
}

export function archiveTargetOf(target: ArchiveTarget | string): ArchiveTarget {
  return typeof target === 'string' ? new DirectoryArchiveTarget(target) : target;
}
