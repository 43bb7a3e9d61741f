import { createReadStream } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import type { PolicyActionRecord } from '../model/index.ts';
import { BatchingSink, type EntrySink } from '../ingest/sink.ts';
import { componentLogger } from '../telemetry/index.ts';
import { type ClusterResource, recordToEntry } from './entry.ts';
import { NetpolError } from './errors.ts';
import { type FlowFormat, parseFlowLine, readLineBatches } from './flows.ts';
import { loadManifests, type ManifestLoad, ManifestWatcher } from './manifests.ts';
import { policyLoggingMetrics as metrics } from './metrics.ts';
import { PolicyActionRecorder, serializeRecord } from './recorder.ts';
import { DEFAULT_SETTINGS, type NetpolSettings } from './settings.ts';
import { logFilePath, type RecordOutput, RotatingFileWriter, StreamWriter } from './writer.ts';

/** Everything `custos netpol` does, callable in-process (tests, benchmarks) with the CLI being a thin shell. */
export interface NetpolRunOptions {
  manifests: string[];
  /** A path, `-` for stdin, or a stream. */
  flows: string | Readable;
  format?: FlowFormat;
  node?: string;
  /** A path (rotated), or `-` for `stdout`. */
  logFile?: string;
  settings?: NetpolSettings;
  /** Also store each record as a LogEntry here (the store over HTTP, or in-process). */
  sink?: EntrySink;
  resource?: ClusterResource;
  /** Reload the manifests when they change (default true). */
  watch?: boolean;
  stdout?: Writable;
  onRecord?(record: PolicyActionRecord): void;
  /** Called after each batch of lines, with the lines read so far (progress). */
  onProgress?(lines: number): void;
  /** Called after each manifest reload (tests wait on it). */
  onReload?(load: ManifestLoad): void;
}

export interface NetpolRunSummary {
  lines: number;
  badLines: number;
  records: number;
}

const MAX_REPORTED_BAD_LINES = 100;
const log = componentLogger('netpol');

function reportLoad(load: ManifestLoad): void {
  for (const warning of load.warnings) {
    log.warn(warning);
    if (warning.includes('is invalid:')) metrics.error('invalid_policy');
    else if (warning.includes('malformed YAML')) metrics.error('manifest_parse_fail');
  }
}

/** Loads the manifests once; an invalid NetworkLogging at start is an error (the command exits non-zero). */
export async function loadForRun(paths: string[]): Promise<ManifestLoad> {
  const load = await loadManifests(paths);
  reportLoad(load);
  if (load.loggingError) {
    metrics.error('invalid_config');
    throw load.loggingError;
  }
  return load;
}

export async function runNetpol(options: NetpolRunOptions): Promise<NetpolRunSummary> {
  const settings = options.settings ?? DEFAULT_SETTINGS;
  const format = options.format ?? 'tuple';
  const load = await loadForRun(options.manifests);
  const output: RecordOutput | undefined =
    options.logFile === undefined ? undefined
    : options.logFile === '-' ? new StreamWriter(options.stdout ?? process.stdout)
    : new RotatingFileWriter(logFilePath(options.logFile), settings.rotateBytes, settings.rotateKeep);
  const batching = options.sink ? new BatchingSink(options.sink, { maxBuffered: 1_000_000 }) : undefined;
  const resource = options.resource ?? { project: 'custos' };
  const summary: NetpolRunSummary = { lines: 0, badLines: 0, records: 0 };
  let unflushedEntries = 0;
  const recorder = new PolicyActionRecorder(load.cluster, {
    settings,
    ...(options.node !== undefined ? { node: options.node } : {}),
    emit(record) {
      summary.records++;
      output?.write(serializeRecord(record));
      if (batching) {
        batching.add(recordToEntry(record, resource));
        unflushedEntries++;
      }
      options.onRecord?.(record);
    },
  });
  const watcher =
    options.watch === false ? undefined
    : new ManifestWatcher(options.manifests, load.cluster.logging, (reloaded) => {
        reportLoad(reloaded);
        if (reloaded.loggingError) {
          metrics.error('invalid_config');
          log.error({ code: reloaded.loggingError.code }, `${reloaded.loggingError.message} (keeping the last valid NetworkLogging setting)`);
        }
        recorder.setCluster(reloaded.cluster);
        log.info({ pods: reloaded.cluster.pods.length, policies: reloaded.cluster.policies.length }, 'manifests reloaded');
        options.onReload?.(reloaded);
      });
  watcher?.start();
  const stream = typeof options.flows !== 'string' ? options.flows : options.flows === '-' ? process.stdin : createReadStream(options.flows, { highWaterMark: 1024 * 1024 });
  // A live source may pause: deny windows still close on time, the flow clock moving with the wall clock meanwhile.
  const live = options.flows === '-';
  let lastFlowT = -Infinity;
  let lastFlowWall = Date.now();
  const idle =
    live
      ? setInterval(() => {
          if (lastFlowT === -Infinity) return;
          recorder.advance(lastFlowT + (Date.now() - lastFlowWall) / 1000);
          void output?.flush();
        }, 1000).unref()
      : undefined;
  try {
    for await (const batch of readLineBatches(stream)) {
      for (const { text, line } of batch) {
        summary.lines++;
        let flow;
        try {
          flow = parseFlowLine(format, text, line);
        } catch (err) {
          if (!(err instanceof NetpolError)) throw err;
          summary.badLines++;
          metrics.error('parse_flow_fail');
          if (summary.badLines <= MAX_REPORTED_BAD_LINES) log.warn({ line: Math.abs(line) }, `bad flow skipped: ${err.message}`);
          if (summary.badLines === MAX_REPORTED_BAD_LINES) log.warn('further bad flow lines are counted in policy_logging_error_count{reason="parse_flow_fail"} only');
          continue;
        }
        if (!flow) continue;
        if (live) {
          lastFlowT = flow.t;
          lastFlowWall = Date.now();
        }
        if ('direction' in flow) recorder.onObserved(flow);
        else recorder.onFlow(flow);
      }
      options.onProgress?.(summary.lines);
      await output?.flush();
      if (output?.failure) {
        log.warn({ err: output.failure }, 'the record output closed; stopping');
        break;
      }
      if (batching && unflushedEntries >= 10_000) {
        unflushedEntries = 0;
        await batching.flush();
      }
    }
    recorder.finish();
  } finally {
    clearInterval(idle);
    watcher?.close();
    await output?.close();
    await batching?.close();
  }
  return summary;
}
