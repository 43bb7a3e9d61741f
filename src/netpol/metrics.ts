import { Counter } from 'prom-client';
import { registry } from '../telemetry/index.ts';
import type { Direction } from './model.ts';

/**
 * The counters GKE's anetd exposes for policy logging (seed 002, "Troubleshooting"). `enforcement` is the direction
 * in which the verdict was enforced (ingress | egress).
 */
const eventCount = new Counter({
  name: 'policy_logging_event_count',
  help: 'Policy verdicts on isolated pods (connections seen by policy logging), by verdict.',
  labelNames: ['verdict'] as const,
  registers: [registry],
});
const logCount = new Counter({
  name: 'policy_logging_log_count',
  help: 'policy-action records written, by enforcement direction and verdict.',
  labelNames: ['enforcement', 'verdict'] as const,
  registers: [registry],
});
const dropCount = new Counter({
  name: 'policy_logging_drop_count',
  help: 'policy-action records dropped (the verdict still held), by enforcement direction and reason (rate_limit | aggregation_limit).',
  labelNames: ['enforcement', 'reason'] as const,
  registers: [registry],
});
const errorCount = new Counter({
  name: 'policy_logging_error_count',
  help: 'Errors of policy logging, by reason (parse_flow_fail, invalid_config, invalid_policy, manifest_parse_fail, write_fail).',
  labelNames: ['reason'] as const,
  registers: [registry],
});

export type Verdict = 'allow' | 'deny';
export type DropReason = 'rate_limit' | 'aggregation_limit';
export type ErrorReason = 'parse_flow_fail' | 'invalid_config' | 'invalid_policy' | 'manifest_parse_fail' | 'write_fail';

// Label children resolved once: the hot path then increments without hashing label sets.
const events = { allow: eventCount.labels('allow'), deny: eventCount.labels('deny') };
const logs = {
  ingress: { allow: logCount.labels('ingress', 'allow'), deny: logCount.labels('ingress', 'deny') },
  egress: { allow: logCount.labels('egress', 'allow'), deny: logCount.labels('egress', 'deny') },
};
const drops = {
  ingress: { rate_limit: dropCount.labels('ingress', 'rate_limit'), aggregation_limit: dropCount.labels('ingress', 'aggregation_limit') },
  egress: { rate_limit: dropCount.labels('egress', 'rate_limit'), aggregation_limit: dropCount.labels('egress', 'aggregation_limit') },
};

export const policyLoggingMetrics = {
  event(verdict: Verdict): void {
    events[verdict].inc();
  },
  logged(direction: Direction, verdict: Verdict): void {
    logs[direction][verdict].inc();
  },
  dropped(direction: Direction, reason: DropReason): void {
    drops[direction][reason].inc();
  },
  error(reason: ErrorReason, count = 1): void {
    errorCount.inc({ reason }, count);
  },
};
