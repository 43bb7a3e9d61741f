import { Worker } from 'node:worker_threads';
import { QueryError } from '../query/index.ts';
import { type EntryIndex, IndexError, type IndexRow } from './entry-index.ts';
import type { IndexCall } from './index-thread.ts';

type Pending = { resolve: (value: unknown) => void; reject: (err: Error) => void };
interface Reply {
  id: number;
  result?: unknown;
  error?: { name: string; message: string; code?: string; line?: number; column?: number };
}

/** Rebuilds the error the index thread threw, keeping its class so callers can still match on it. */
function revive(error: NonNullable<Reply['error']>): Error {
  const prototype = error.name === 'QueryError' ? QueryError.prototype : error.name === 'IndexError' ? IndexError.prototype : Error.prototype;
  return Object.assign(Object.create(prototype) as Error, { ...error, stack: `${error.name}: ${error.message}\n    at the index thread` });
}

/**
 * The DuckDB index on its own thread: flattening entries for search and DuckDB's appender run beside the write path
 * (HTTP, validation, canonical JSON, hashing, fsync) on the other core, instead of taking turns with it. Same methods
 * as `EntryIndex`.
 */
export class ThreadedEntryIndex implements Pick<EntryIndex, 'insert' | 'insertRun' | 'indexedSize' | 'list' | 'clear' | 'close'> {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private failure: Error | undefined;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (reply: Reply) => {
      const call = this.pending.get(reply.id);
      if (!call) return;
      this.pending.delete(reply.id);
      if (reply.error) call.reject(revive(reply.error));
      else call.resolve(reply.result);
    });
    worker.on('error', (err) => {
      this.failure = err;
      for (const call of this.pending.values()) call.reject(err);
      this.pending.clear();
    });
  }

  static async open(path: string): Promise<ThreadedEntryIndex> {
    const tsx = import.meta.resolve('tsx/esm/api');
    const thread = new URL('./index-thread.ts', import.meta.url).href;
    const bootstrap = `import { register } from ${JSON.stringify(tsx)}; register(); await import(${JSON.stringify(thread)});`;
    const worker = new Worker(new URL(`data:text/javascript,${encodeURIComponent(bootstrap)}`), { workerData: path });
    await new Promise<void>((resolve, reject) => {
      const onMessage = (reply: Reply) => {
        if (reply.id !== 0) return;
        worker.off('message', onMessage).off('error', reject);
        resolve();
      };
      worker.on('message', onMessage).once('error', reject);
    });
    return new ThreadedEntryIndex(worker);
  }

  private call<T>(method: IndexCall['method'], ...args: unknown[]): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
      this.worker.postMessage({ id, method, args } satisfies IndexCall);
    });
  }

  insert(org: string, rows: IndexRow[]): Promise<void> {
    // One string for the batch: cloning it to the thread costs a copy, not one object per row. JSON text never
    // holds a raw line feed, so the thread can split it again.
    return this.call('insert', org, rows.map((r) => r.index), rows.map((r) => r.json ?? JSON.stringify(r.entry)).join('\n'));
  }

  /** One string crosses to the thread as it is: no work per row on this side. */
  insertRun(org: string, first: number, runs: readonly string[]): Promise<void> {
    return this.call('insertRun', org, first, runs);
  }

  indexedSize(org: string): Promise<number> {
    return this.call('indexedSize', org);
  }

  list(request: Parameters<EntryIndex['list']>[0]): ReturnType<EntryIndex['list']> {
    return this.call('list', request);
  }

  clear(org?: string): Promise<void> {
    return this.call('clear', org);
  }

  async close(): Promise<void> {
    await this.call('close');
    await this.worker.terminate();
  }
}
