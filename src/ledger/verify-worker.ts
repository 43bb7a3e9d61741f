// Worker side of the parallel data-dir verification: scans one segment file (length, CRC-32, index sequence),
// hashes its leaves and subtrees, and returns the compact ranges between the checkpoint sizes that fall inside
// it, so the caller joins segments in order with O(log n) work each.
import { parentPort } from 'node:worker_threads';
import { CompactRange, leafHash } from './merkle.ts';
import { scanSegment, type SegmentScan } from './segment.ts';

export interface SegmentJob {
  id: number;
  path: string;
  firstIndex: number;
  /** Sorted tree sizes at which the caller needs a root (its checkpoints). */
  boundaries: number[];
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
  const scan = await scanSegment(path, firstIndex, (_index, payload) => {
    range.appendLeaf(leafHash(payload));
    count++;
    if (range.end === boundary) {
      ranges.push({ end: range.end, nodes: range.nodes() });
      range = new CompactRange(range.end);
      while (next >= 0 && next < boundaries.length && (boundaries[next] as number) <= range.end) next++;
      boundary = next >= 0 && next < boundaries.length ? (boundaries[next] as number) : Infinity;
    }
  });
  if (range.end > range.begin || ranges.length === 0) ranges.push({ end: range.end, nodes: range.nodes() });
  return { scan, count, ranges };
}

const port = parentPort;
if (port) {
  port.on('message', (job: SegmentJob) => {
    scanSegmentRanges(job.path, job.firstIndex, job.boundaries).then(
      (result) => port.postMessage({ id: job.id, ...result }),
      (err: unknown) => port.postMessage({ id: job.id, error: (err as Error).message }),
    );
  });
}
