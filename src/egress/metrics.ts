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

export function countRecord(record: EgressRecord): void {
  const source = record.metadata.source ?? '';
  const policy = record.metadata.network_policy ?? '';
  const result = record.response_flags;
  egressMetrics.connections.inc({ source, policy, network_type: record.metadata.network_type, result, reason: record.failure_reason ?? 'none' });
  egressMetrics.duration.observe({ source, policy, network_type: record.metadata.network_type, result }, record.duration_ms / 1000);
  if (record.request_size) egressMetrics.bytes.inc({ source, policy, direction: 'request' }, record.request_size);
  if (record.response_size) egressMetrics.bytes.inc({ source, policy, direction: 'response' }, record.response_size);
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
