/**
 * The one envelope every stored record travels in, shaped like Cloud Logging's LogEntry so that the
 * seeds' own queries (`resource.type="k8s_node"`, `logName=…`, `jsonPayload.…`) run unchanged.
 */
export const SEVERITIES = [
  'DEFAULT', 'DEBUG', 'INFO', 'NOTICE', 'WARNING', 'ERROR', 'CRITICAL', 'ALERT', 'EMERGENCY',
] as const;
export type Severity = (typeof SEVERITIES)[number];

export interface MonitoredResource {
  type: string;
  labels: Record<string, string>;
}

/** An entry as stored: every field is present and the organization is fixed. */
export interface LogEntry {
  insertId: string;
  logName: string;
  timestamp: string;
  receiveTimestamp: string;
  severity: Severity;
  resource: MonitoredResource;
  labels: Record<string, string>;
  /** Seed 001 audit categories (`authenticationCheck`, `userLogin`, …); empty for non-audit logs. */
  categories: string[];
  /** The tenant the entry belongs to; access, ledgers and exports are scoped by it. */
  organization: string;
  jsonPayload?: Record<string, unknown>;
  textPayload?: string;
}

/** An entry as a client sends it: only `logName` and one payload are required. */
export interface LogEntryInput {
  insertId?: string;
  logName: string;
  timestamp?: string;
  severity?: Severity;
  resource?: MonitoredResource;
  labels?: Record<string, string>;
  categories?: string[];
  jsonPayload?: Record<string, unknown>;
  textPayload?: string;
}

export const DEFAULT_ORGANIZATION = 'default';
export const DEFAULT_PROJECT = 'custos';

/** The log ids Custos writes itself; clients may use any other name. */
export const LOG_IDS = {
  policyAction: 'policy-action',
  networkEgress: 'network-egress',
  dataProxyAudit: 'data-proxy-audit',
  audit: 'audit',
} as const;

export function logName(project: string, logId: string): string {
  return `projects/${project}/logs/${encodeURIComponent(logId)}`;
}

/** The log id of a `logName` (`projects/P/logs/policy-action` → `policy-action`), or undefined. */
export function logIdOf(name: string): string | undefined {
  const match = /^(?:projects|organizations|folders|billingAccounts)\/[^/]+\/logs\/(.+)$/.exec(name);
  return match?.[1] === undefined ? undefined : decodeURIComponent(match[1]);
}
