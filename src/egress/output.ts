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

export function createRecordOutput(options: { logFile?: string; sink?: EntrySink; project: string; proxyId?: string }): RecordOutput {
  const proxyId = options.proxyId ?? hostname();
  const file: WriteStream | NodeJS.WriteStream | undefined =
    options.logFile === '-' ? process.stdout : options.logFile ? createWriteStream(options.logFile, { flags: 'a' }) : undefined;
  const batching = options.sink ? new BatchingSink(options.sink) : undefined;
  // Lines written in one event-loop turn go out in one write: one syscall for a burst of short connections.
  let pending = '';
  const flush = (): void => {
    if (pending) file?.write(pending);
    pending = '';
  };
  return {
    write(record) {
      const entry = toLogEntry(record, { project: options.project, proxyId });
      if (file) {
        if (!pending) setImmediate(flush);
        pending += `${JSON.stringify(entry)}\n`;
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
