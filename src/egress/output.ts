import { createWriteStream, type WriteStream } from 'node:fs';
import { hostname } from 'node:os';
import { BatchingSink, type EntrySink } from '../ingest/sink.ts';
import type { EgressRecord } from '../model/index.ts';
import { toLogEntry } from './metrics.ts';

/**
 * Where records go: NDJSON LogEntries to a file or stdout (`--log-file PATH|-`, replayable with `custos ingest`),
 * and/or the store through a batching `EntrySink` (`--server`, or in-process inside `custos serve`).
 */
export interface RecordOutput {
  write(record: EgressRecord): void;
  close(): Promise<void>;
}

/**
 * Lines are gathered for up to FLUSH_MS (or FLUSH_BYTES) and written in one call. A file write goes through libuv's
 * thread pool, and one per short connection cost a thread hand-off and wake-up each (measured: about a third of the
 * proxy's system time per tunnel at thousands of tunnels/s); a few writes a second cost nothing.
 */
const FLUSH_MS = 100;
const FLUSH_BYTES = 256 * 1024;

export function createRecordOutput(options: { logFile?: string; sink?: EntrySink; project: string; proxyId?: string }): RecordOutput {
  const proxyId = options.proxyId ?? hostname();
  const file: WriteStream | NodeJS.WriteStream | undefined =
    options.logFile === '-' ? process.stdout : options.logFile ? createWriteStream(options.logFile, { flags: 'a' }) : undefined;
  const batching = options.sink ? new BatchingSink(options.sink) : undefined;
  let pending = '';
  let timer: NodeJS.Timeout | undefined;
  const flush = (): void => {
    clearTimeout(timer);
    timer = undefined;
    if (pending) file?.write(pending);
    pending = '';
  };
  return {
    write(record) {
      const entry = toLogEntry(record, { project: options.project, proxyId });
      if (file) {
        pending += `${JSON.stringify(entry)}\n`;
        if (pending.length >= FLUSH_BYTES) flush();
        else timer ??= setTimeout(flush, FLUSH_MS);
      }
      batching?.add(entry);
    },
    async close() {
      flush();
      await batching?.close();
      if (file && file !== process.stdout) await new Promise<void>((resolve) => (file as WriteStream).end(() => resolve()));
    },
  };
}
