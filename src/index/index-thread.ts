/**
 * Worker side of `ThreadedEntryIndex`: hosts the DuckDB index and answers calls posted from the main thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { EntryIndex, runRows } from './entry-index.ts';

export interface IndexCall {
  id: number;
  method: 'insert' | 'insertRun' | 'indexedSize' | 'list' | 'clear' | 'close';
  args: unknown[];
}

const index = await EntryIndex.open(workerData as string);
const port = parentPort!;

port.on('message', async ({ id, method, args }: IndexCall) => {
  try {
    let result: unknown;
    if (method === 'insert') {
      // Entries arrive as JSON text, one per line: parsing them here keeps that work off the write path.
      const [org, indexes, text] = args as [string, number[], string];
      const lines = text.split('\n');
      result = await index.insert(org, indexes.map((index, i) => ({ index, json: lines[i] as string })));
    } else if (method === 'insertRun') {
      const [org, first, runs] = args as [string, number, string[]];
      result = await index.insert(org, runRows(first, runs));
    } else if (method === 'indexedSize') result = await index.indexedSize(args[0] as string);
    else if (method === 'list') result = await index.list(args[0] as Parameters<EntryIndex['list']>[0]);
    else if (method === 'clear') result = await index.clear(args[0] as string | undefined);
    else result = await index.close();
    port.postMessage({ id, result });
  } catch (err) {
    const e = err as Error & { code?: string; line?: number; column?: number };
    port.postMessage({ id, error: { name: e.name, message: e.message, code: e.code, line: e.line, column: e.column } });
  }
});
port.postMessage({ id: 0, result: 'ready' });
