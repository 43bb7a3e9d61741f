/**
 * Seed 001 audit categories: a family of activity that an analyst filters by. Any auditable event is a union
 * of categories. The first eight are the seed's table; the rest complete the families Custos itself emits.
 */
export const AUDIT_CATEGORIES = [
  'authenticationCheck', 'dataCreate', 'dataDelete', 'dataExport', 'dataImport', 'tokenGeneration',
  'userLogin', 'userLogout',
  'dataLoad', 'dataUpdate', 'dataSearch', 'managementPermissions', 'managementTokens', 'networkEgress',
  'networkPolicy',
] as const;
export type AuditCategory = (typeof AUDIT_CATEGORIES)[number];

/** Action → categories for the actions Custos knows; matched on the full action, then on its verb. */
const BY_ACTION: Record<string, AuditCategory[]> = {
  // A check; whether it was also a login is the sender's to say (see LOGIN_UNLESS_TOLD).
  'user.authentication': ['authenticationCheck'],
  'user.login': ['userLogin', 'authenticationCheck'],
  'user.logout': ['userLogout'],
  'token.validate': ['authenticationCheck'],
  'token.create': ['tokenGeneration', 'managementTokens'],
  'token.revoke': ['managementTokens'],
};
const BY_VERB: Record<string, AuditCategory[]> = {
  login: ['userLogin', 'authenticationCheck'],
  logout: ['userLogout'],
  create: ['dataCreate'],
  delete: ['dataDelete'],
  purge: ['dataDelete'],
  export: ['dataExport'],
  download: ['dataExport'],
  import: ['dataImport'],
  upload: ['dataImport'],
  update: ['dataUpdate'],
  read: ['dataLoad'],
  load: ['dataLoad'],
  search: ['dataSearch'],
  generate: ['tokenGeneration'],
};

/**
 * Actions that are a login when the sender states no categories: seed 003's example `user.authentication` events
 * are connection-time logins. A sender that does state categories knows whether it was one (the data proxy sends
 * `userLogin` on the login and not on the per-query checks that follow), so its word stands.
 */
const LOGIN_UNLESS_TOLD = new Set(['user.authentication']);

/** Categories for an action, derived from the tables above; an unknown action derives none. */
export function categoriesForAction(action: string): AuditCategory[] {
  const exact = BY_ACTION[action];
  if (exact) return exact;
  const verb = action.slice(action.lastIndexOf('.') + 1);
  return BY_VERB[verb] ?? [];
}

/** The action an entry's payload reports: a data-proxy `header.event.action` or a platform event's `action`. */
export function actionOf(payload: Record<string, unknown> | undefined): string | undefined {
  if (!payload) return undefined;
  const header = payload['header'] as { event?: { action?: unknown } } | undefined;
  const action = header?.event?.action ?? payload['action'];
  return typeof action === 'string' ? action : undefined;
}

/** The client's categories, kept in their order, followed by the derived ones it did not send. */
export function mergeCategories(sent: readonly string[] | undefined, payload: Record<string, unknown> | undefined): string[] {
  const out = [...new Set(sent ?? [])];
  const action = actionOf(payload);
  if (!action) return out;
  const derived = categoriesForAction(action);
  const implied = LOGIN_UNLESS_TOLD.has(action) && out.length === 0 ? [...derived, 'userLogin'] : derived;
  for (const c of implied) if (!out.includes(c)) out.push(c);
  return out;
}
