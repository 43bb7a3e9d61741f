// Worker side of parallel segment scanning: scans one segment file (length, CRC-32, index sequence) and returns
// either its leaf hashes (to rebuild a ledger's tree on open) or, for verification, the compact ranges between
// the checkpoint sizes that fall inside it, which the caller joins in order with O(log n) work each.
import { parentPort } from 'node:worker_threads';
import { CompactRange, HASH_SIZE, leafHashes } from './merkle.ts';
import { scanSegment, type SegmentScan } from './segment.ts';

export interface SegmentJob {
  id: number;
  path: string;
  firstIndex: number;
  /** Sorted tree sizes at which the caller needs a root (its checkpoints); absent: return the leaf hashes. */
  boundaries?: number[];
}

export interface ScannedLeaves {
  scan: SegmentScan;
  count: number;
  /** `count` leaf hashes of 32 bytes, back to back. */
  leaves: Uint8Array;
}

export async function scanSegmentLeaves(path: string, firstIndex: number): Promise<ScannedLeaves> {
  let leaves = Buffer.allocUnsafe(64 * 1024 * HASH_SIZE);
  let count = 0;
  const scan = await scanSegment(path, firstIndex, {
    run: (chunk, ranges, n) => {
      if ((count + n) * HASH_SIZE > leaves.length) {
        const bigger = Buffer.allocUnsafe(Math.max(leaves.length * 2, (count + n) * HASH_SIZE));
        leaves.copy(bigger, 0, 0, count * HASH_SIZE);
        leaves = bigger;
      }
      leafHashes(chunk, ranges, n).copy(leaves, count * HASH_SIZE);
      count += n;
    },
  });
  const out = new Uint8Array(count * HASH_SIZE);
  out.set(leaves.subarray(0, count * HASH_SIZE));
  return { scan, count, leaves: out };
}

export interface HashedRange {
  /** The range covers [previous range's end, end). */
  end: number;
  nodes: { level: number; hash: Uint8Array }[];
}

export interface ScannedSegment {
  scan: SegmentScan;
  count: number;
  ranges: HashedRange[];
}

export async function scanSegmentRanges(path: string, firstIndex: number, boundaries: readonly number[]): Promise<ScannedSegment> {
  const ranges: HashedRange[] = [];
  let next = boundaries.findIndex((size) => size > firstIndex);
  let boundary = next < 0 ? Infinity : (boundaries[next] as number);
  let range = new CompactRange(firstIndex);
  let count = 0;
  const scan = await scanSegment(path, firstIndex, {
    run: (chunk, payloads, n) => {
      const leaves = leafHashes(chunk, payloads, n);
      for (let i = 0; i < n; i++) {
        range.appendLeaf(leaves.subarray(i * HASH_SIZE, (i + 1) * HASH_SIZE));
        count++;
        if (range.end === boundary) {
          ranges.push({ end: range.end, nodes: range.nodes() });
          range = new CompactRange(range.end);
          while (next >= 0 && next < boundaries.length && (boundaries[next] as number) <= range.end) next++;
          boundary = next >= 0 && next < boundaries.length ? (boundaries[next] as number) : Infinity;
        }
      }
    },
  });
  if (range.end > range.begin || ranges.length === 0) ranges.push({ end: range.end, nodes: range.nodes() });
  return { scan, count, ranges };
}

const port = parentPort;
if (port) {
  port.on('message', (job: SegmentJob) => {
    const fail = (err: unknown): void => port.postMessage({ id: job.id, error: (err as Error).message });
    if (job.boundaries === undefined) {
      scanSegmentLeaves(job.path, job.firstIndex).then((result) => port.postMessage({ id: job.id, ...result }, [result.leaves.buffer as ArrayBuffer]), fail);
    } else {
      scanSegmentRanges(job.path, job.firstIndex, job.boundaries).then((result) => port.postMessage({ id: job.id, ...result }), fail);
    }
  });
}
