import { Counter } from 'prom-client';
import { registry } from '../telemetry/index.ts';
import type { Direction } from './model.ts';

/**
 * The counters GKE's anetd exposes for policy logging (seed 002, "Troubleshooting"). `enforcement` is the direction
 * in which the verdict was enforced (ingress | egress).
 *
 * The hot path (a few increments per flow) bumps plain numbers; they are handed to prom-client when the registry is
 * read, because a labelled prom-client increment hashes its labels every time.
 */
interface Slot {
  labels: Record<string, string>;
  pending: number;
}

function bufferedCounter(name: string, help: string, labelNames: string[]): (labels: Record<string, string>) => Slot {
  const slots: Slot[] = [];
  new Counter({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      for (const slot of slots)
        if (slot.pending) {
          this.inc(slot.labels, slot.pending);
          slot.pending = 0;
        }
    },
  });
  return (labels) => {
    const slot = { labels, pending: 0 };
    slots.push(slot);
    return slot;
  };
}

const eventSlot = bufferedCounter('policy_logging_event_count', 'Policy verdicts on isolated pods (connections seen by policy logging), by verdict.', ['verdict']);
const logSlot = bufferedCounter('policy_logging_log_count', 'policy-action records written, by enforcement direction and verdict.', ['enforcement', 'verdict']);
const dropSlot = bufferedCounter('policy_logging_drop_count', 'policy-action records dropped (the verdict still held), by enforcement direction and reason (rate_limit | aggregation_limit).', ['enforcement', 'reason']);
const errorCount = new Counter({
  name: 'policy_logging_error_count',
  help: 'Errors of policy logging, by reason (parse_flow_fail, invalid_config, invalid_policy, manifest_parse_fail).',
  labelNames: ['reason'] as const,
  registers: [registry],
});

export type Verdict = 'allow' | 'deny';
export type DropReason = 'rate_limit' | 'aggregation_limit';
export type ErrorReason = 'parse_flow_fail' | 'invalid_config' | 'invalid_policy' | 'manifest_parse_fail';

const events = { allow: eventSlot({ verdict: 'allow' }), deny: eventSlot({ verdict: 'deny' }) };
const byDirection = <T>(make: (enforcement: Direction) => T) => ({ ingress: make('ingress'), egress: make('egress') });
const logs = byDirection((enforcement) => ({ allow: logSlot({ enforcement, verdict: 'allow' }), deny: logSlot({ enforcement, verdict: 'deny' }) }));
const drops = byDirection((enforcement) => ({ rate_limit: dropSlot({ enforcement, reason: 'rate_limit' }), aggregation_limit: dropSlot({ enforcement, reason: 'aggregation_limit' }) }));

export const policyLoggingMetrics = {
  event(verdict: Verdict): void {
    events[verdict].pending++;
  },
  logged(direction: Direction, verdict: Verdict): void {
    logs[direction][verdict].pending++;
  },
  dropped(direction: Direction, reason: DropReason): void {
    drops[direction][reason].pending++;
  },
  error(reason: ErrorReason, count = 1): void {
    errorCount.inc({ reason }, count);
  },
};
