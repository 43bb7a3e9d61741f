/**
 * Seed 001: a platform audit event, as any service (Custos itself included) reports an auditable action.
 * The seed fixes the categories and the parameters each one carries; the field names are Custos's own.
 */
export interface PlatformAuditEvent {
  /** `object.action`, e.g. `user.login`, `dataset.delete`, `token.create`. */
  action: string;
  outcome: 'SUCCESS' | 'FAILURE';
  actor: { userId?: string; username?: string; sessionId?: string; realm?: string; sourceIp?: string };
  /** The resource acted on, if any (resource id, name, type). */
  target?: { id?: string; name?: string; type?: string };
  /** Category-specific parameters from seed 001's table (spaceRid, size, tokenTtl, …). */
  parameters?: Record<string, unknown>;
  reason?: string;
}
