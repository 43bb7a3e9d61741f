import { Counter, Gauge, Histogram } from 'prom-client';
import { LOG_IDS, logName, type EgressRecord, type LogEntryInput } from '../model/index.ts';
import { registry } from '../telemetry/index.ts';

/**
 * Egress metrics on the process's one registry, created once per process so the CLI, `custos serve --demo` and
 * tests can all start proxies side by side. Label values follow the records: `source` and `policy` are resource
 * identifiers ('' when unknown), `result` is `response_flags`, `reason` the failure reason or `none`.
 */
function once<T>(name: string, create: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? create();
}

export const egressMetrics = {
  connections: once(
    'custos_egress_connections_total',
    () =>
      new Counter({
        name: 'custos_egress_connections_total',
        help: 'Egress connection attempts by source, policy, network type, result (success|failed) and failure reason.',
        labelNames: ['source', 'policy', 'network_type', 'result', 'reason'] as const,
        registers: [registry],
        collect: flushTallies,
      }),
  ),
  bytes: once(
    'custos_egress_bytes_total',
    () =>
      new Counter({
        name: 'custos_egress_bytes_total',
        help: 'Bytes relayed, direction request (to the destination) or response (from it).',
        labelNames: ['source', 'policy', 'direction'] as const,
        registers: [registry],
        collect: flushTallies,
      }),
  ),
  duration: once(
    'custos_egress_connection_duration_seconds',
    () =>
      new Histogram({
        name: 'custos_egress_connection_duration_seconds',
        help: 'Duration of egress connection attempts, from accept to close.',
        labelNames: ['source', 'policy', 'network_type', 'result'] as const,
        buckets: [0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10, 60, 300, 1800],
        registers: [registry],
      }),
  ),
  active: once(
    'custos_egress_active_connections',
    () =>
      new Gauge({
        name: 'custos_egress_active_connections',
        help: 'Client connections open now, by source (empty before the source is known).',
        labelNames: ['source'] as const,
        registers: [registry],
        collect() {
          for (const [source, open] of openBySource) this.set({ source }, open);
        },
      }),
  ),
  agentHealthy: once(
    'custos_egress_agent_healthy',
    () =>
      new Gauge({
        name: 'custos_egress_agent_healthy',
        help: '1 when the agent of an agent-proxy policy passed its last health check, 0 when not.',
        labelNames: ['policy', 'agent'] as const,
        registers: [registry],
      }),
  ),
  paths: once(
    'custos_egress_connection_paths_total',
    () =>
      new Counter({
        name: 'custos_egress_connection_paths_total',
        help:
          'Connection attempts by the path that carried them: plane_verdict (the native plane dialled on a remembered decision), ' +
          'plane_decided (decided in JavaScript, relayed by the plane), socket (Node sockets throughout).',
        labelNames: ['path'] as const,
        registers: [registry],
        collect() {
          for (const path of Object.keys(pathTallies) as ConnectionPath[]) {
            if (pathTallies[path]) this.inc({ path }, pathTallies[path]);
            pathTallies[path] = 0;
          }
        },
      }),
  ),
  reloads: once(
    'custos_egress_config_reloads_total',
    () =>
      new Counter({
        name: 'custos_egress_config_reloads_total',
        help: 'Configuration reloads (SIGHUP or file change) by result (applied|rejected).',
        labelNames: ['result'] as const,
        registers: [registry],
      }),
  ),
};

/*
 * Per-connection counts are tallied in plain maps and handed to prom-client when it collects (each scrape), or every
 * TALLY_FLUSH records: prom-client hashes and validates the label set on every inc(), which was a measurable share of
 * the proxy's CPU per connection at thousands of connections a second. A scrape sees the same series and values.
 */
interface Tally {
  connection: { source: string; policy: string; network_type: string; result: string; reason: string };
  connections: number;
  requestBytes: number;
  responseBytes: number;
}

const TALLY_FLUSH = 4096;
const tallies = new Map<string, Tally>();
let untallied = 0;
const openBySource = new Map<string, number>();

function flushTallies(): void {
  untallied = 0;
  for (const tally of tallies.values()) {
    const { source, policy } = tally.connection;
    if (tally.connections) egressMetrics.connections.inc(tally.connection, tally.connections);
    if (tally.requestBytes) egressMetrics.bytes.inc({ source, policy, direction: 'request' }, tally.requestBytes);
    if (tally.responseBytes) egressMetrics.bytes.inc({ source, policy, direction: 'response' }, tally.responseBytes);
    tally.connections = tally.requestBytes = tally.responseBytes = 0;
  }
}

export function countRecord(record: EgressRecord): void {
  const source = record.metadata.source ?? '';
  const policy = record.metadata.network_policy ?? '';
  const networkType = record.metadata.network_type;
  const result = record.response_flags;
  const reason = record.failure_reason ?? 'none';
  const key = `${source}\n${policy}\n${networkType}\n${result}\n${reason}`;
  let tally = tallies.get(key);
  if (!tally) tallies.set(key, (tally = { connection: { source, policy, network_type: networkType, result, reason }, connections: 0, requestBytes: 0, responseBytes: 0 }));
  tally.connections++;
  tally.requestBytes += record.request_size;
  tally.responseBytes += record.response_size;
  if (++untallied >= TALLY_FLUSH) flushTallies();
  egressMetrics.duration.observe({ source, policy, network_type: networkType, result }, record.duration_ms / 1000);
}

export type ConnectionPath = 'plane_verdict' | 'plane_decided' | 'socket';
const pathTallies: Record<ConnectionPath, number> = { plane_verdict: 0, plane_decided: 0, socket: 0 };

export function countPath(path: ConnectionPath): void {
  pathTallies[path]++;
}

/** The active-connections gauge, read at collect time. */
export function connectionOpened(source: string): void {
  openBySource.set(source, (openBySource.get(source) ?? 0) + 1);
}

export function connectionClosed(source: string): void {
  openBySource.set(source, (openBySource.get(source) ?? 1) - 1);
}

export const EGRESS_RESOURCE_TYPE = 'custos_egress_proxy';

/**
 * The stored form: `logName` projects/P/logs/network-egress, the record untouched as `jsonPayload`, and labels that
 * carry source and policy so "logs for this source" is one filter (`labels.source="ri.source.x"`).
 */
export function toLogEntry(record: EgressRecord, options: { project: string; proxyId: string }): LogEntryInput {
  const labels: Record<string, string> = { network_type: record.metadata.network_type, response_flags: record.response_flags };
  if (record.metadata.source) labels['source'] = record.metadata.source;
  if (record.metadata.network_policy) labels['network_policy'] = record.metadata.network_policy;
  const entry: LogEntryInput = {
    logName: egressLogName(options.project),
    timestamp: record.end_time ?? new Date().toISOString(),
    severity: record.response_flags === 'success' ? 'INFO' : 'WARNING',
    resource: { type: EGRESS_RESOURCE_TYPE, labels: { project_id: options.project, proxy_id: options.proxyId } },
    labels,
    jsonPayload: record as unknown as Record<string, unknown>,
  };
  if (record.connection_id) entry.insertId = record.connection_id;
  return entry;
}

let lastLogName: { project: string; name: string } | undefined;

/** One entry per connection: the logName is built once per project, not per record. */
function egressLogName(project: string): string {
  if (lastLogName?.project !== project) lastLogName = { project, name: logName(project, LOG_IDS.networkEgress) };
  return lastLogName.name;
}
