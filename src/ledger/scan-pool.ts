import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { scanSegmentLeaves, scanSegmentRanges, type ScannedLeaves, type ScannedSegment, type SegmentJob } from './scan-worker.ts';

type Reply = ((ScannedSegment | ScannedLeaves) & { id: number }) | { id: number; error: string };

/**
 * Scans segment files on worker threads so that hashing (the bulk of verification) uses every core; with no
 * workers it scans in process. Workers load the TypeScript sources through tsx, as the CLI does.
 */
export class ScanPool {
  private readonly workers: Worker[] = [];
  private readonly waiting = new Map<number, { resolve: (result: never) => void; reject: (err: Error) => void }>();
  private nextId = 0;

  constructor(size = availableParallelism()) {
    const tsx = import.meta.resolve('tsx/esm/api');
    const worker = new URL('./scan-worker.ts', import.meta.url).href;
    const bootstrap = `import { register } from ${JSON.stringify(tsx)}; register(); await import(${JSON.stringify(worker)});`;
    for (let i = 0; i < size; i++) {
      const thread = new Worker(new URL(`data:text/javascript,${encodeURIComponent(bootstrap)}`));
      thread.on('message', (reply: Reply) => this.settle(reply));
      thread.on('error', (err) => this.failAll(err));
      this.workers.push(thread);
    }
  }

  /** Compact ranges of a segment, split at `boundaries` (verification). */
  scan(path: string, firstIndex: number, boundaries: number[]): Promise<ScannedSegment> {
    if (this.workers.length === 0) return scanSegmentRanges(path, firstIndex, boundaries);
    return this.submit({ path, firstIndex, boundaries });
  }

  /** Leaf hashes of a segment (rebuilding a tree on open). */
  leaves(path: string, firstIndex: number): Promise<ScannedLeaves> {
    if (this.workers.length === 0) return scanSegmentLeaves(path, firstIndex);
    return this.submit({ path, firstIndex });
  }

  private submit<T>(job: Omit<SegmentJob, 'id'>): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (result: never) => void, reject });
      (this.workers[id % this.workers.length] as Worker).postMessage({ ...job, id } satisfies SegmentJob);
    });
  }

  private settle(reply: Reply): void {
    const waiter = this.waiting.get(reply.id);
    if (!waiter) return;
    this.waiting.delete(reply.id);
    if ('error' in reply) waiter.reject(new Error(reply.error));
    else waiter.resolve(reply as never);
  }

  private failAll(err: Error): void {
    for (const waiter of this.waiting.values()) waiter.reject(err);
    this.waiting.clear();
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((worker) => worker.terminate()));
  }
}
