import { NetpolError } from './errors.ts';

/**
 * The NetworkLogging object (networking.gke.io/v1alpha1, name `default`, seed 002 "NetworkLogging spec"): whether
 * allowed and denied connections are logged, and whether that choice is delegated to policy and namespace
 * annotations.
 */
export interface LogAction {
  log: boolean;
  delegate: boolean;
}

export interface LoggingSetting {
  allow: LogAction;
  deny: LogAction;
}

/** Used when the manifests hold no NetworkLogging object: log everything (a what-if run that logs nothing helps no one). */
export const DEFAULT_LOGGING: LoggingSetting = { allow: { log: true, delegate: false }, deny: { log: true, delegate: false } };

function action(raw: unknown, which: 'allow' | 'deny'): LogAction {
  const value = (raw ?? {}) as Record<string, unknown>;
  if (typeof value !== 'object' || Array.isArray(value)) throw new NetpolError('INVALID_LOGGING', `spec.cluster.${which}: Invalid value: must be an object`);
  for (const field of ['log', 'delegate'] as const)
    if (value[field] !== undefined && typeof value[field] !== 'boolean')
      throw new NetpolError('INVALID_LOGGING', `spec.cluster.${which}.${field}: Invalid value: ${JSON.stringify(value[field])}: must be a boolean`);
  const result = { log: value['log'] === true, delegate: value['delegate'] === true };
  // The exact event text of GKE's network-logging-controller (seed 002, "Troubleshooting").
  if (result.delegate && !result.log) throw new NetpolError('INVALID_LOGGING', `cluster ${which} log action is invalid: delegate cannot be true when log is false`);
  return result;
}

/** Reads a NetworkLogging `spec`; throws NetpolError('INVALID_LOGGING') with the controller's message. */
export function parseNetworkLogging(spec: unknown): LoggingSetting {
  const cluster = ((spec ?? {}) as Record<string, unknown>)['cluster'];
  const c = (cluster ?? {}) as Record<string, unknown>;
  return { allow: action(c['allow'], 'allow'), deny: action(c['deny'], 'deny') };
}

/**
 * Which allowing policies an allow record lists, or undefined when the connection is not logged. With delegation only
 * policies annotated `policy.network.gke.io/enable-logging: "true"` count, and none left means no record.
 */
export function allowedPoliciesToLog<P extends { loggingEnabled: boolean }>(setting: LoggingSetting, allowing: P[]): P[] | undefined {
  if (!setting.allow.log) return undefined;
  if (!setting.allow.delegate) return allowing;
  const kept = allowing.filter((p) => p.loggingEnabled);
  return kept.length ? kept : undefined;
}

/** Whether a deny is logged; with delegation only in namespaces annotated `…/enable-deny-logging: "true"`. */
export function denyIsLogged(setting: LoggingSetting, namespaceDenyLogging: boolean): boolean {
  return setting.deny.log && (!setting.deny.delegate || namespaceDenyLogging);
}
