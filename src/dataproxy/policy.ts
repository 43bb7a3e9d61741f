/**
 * Policy resolution: which transformations and record-level filters apply to a user (by name, group, project),
 * per protected table. Pure over the policy list; `PolicySource` fetches the list from the config or a URL.
 */
import { DataProxyError } from './errors.ts';
import { parsePolicyList, type FieldConfig, type PolicyConfig, type RuleCondition, type TransformationConfig } from './config.ts';
import { relationKey } from './catalog.ts';

export interface Principal {
  name: string;
  id: string;
  groups: string[];
  project: string;
}

export interface AppliedRule {
  policy: PolicyConfig;
  rule: PolicyConfig['rules'][number];
  field: FieldConfig;
  transformation: TransformationConfig;
}

export interface AppliedFilter {
  policy: PolicyConfig;
  field: FieldConfig;
  expression: string;
}

/** What a user sees of one protected table: per field a rule (absent: retained), row filters, or no rows at all. */
export interface TablePlan {
  key: string;
  schema: string;
  table: string;
  fields: Map<string, AppliedRule>;
  filters: AppliedFilter[];
  /** DENY_ACCESS and no filter grants this user rows. */
  denyAll: boolean;
}

export interface Resolution {
  /** Every table any policy names, whether or not it applies to this user. */
  protectedTables: Set<string>;
  /** The tables this user sees masked or filtered. */
  plans: Map<string, TablePlan>;
  /** True when any plan applies: the session is restricted to statements that can be rewritten. */
  masked: boolean;
}

function matches(condition: RuleCondition, who: Principal): boolean {
  if (condition.users && !condition.users.includes(who.name) && !condition.users.includes(who.id)) return false;
  if (condition.groups && !condition.groups.some((g) => who.groups.includes(g))) return false;
  if (condition.projects && !condition.projects.includes(who.project)) return false;
  return true;
}

export function protectedTablesOf(policies: PolicyConfig[]): Set<string> {
  const out = new Set<string>();
  for (const p of policies) {
    for (const r of p.rules) for (const f of r.fields) out.add(relationKey(f.schema, f.table));
    for (const f of p.filters) out.add(relationKey(f.schema, f.table));
  }
  return out;
}

export function resolvePolicies(policies: PolicyConfig[], who: Principal, rlacFilterBehaviour: 'DENY_ACCESS' | 'ALLOW_ACCESS'): Resolution {
  const protectedTables = protectedTablesOf(policies);
  const plans = new Map<string, TablePlan>();
  const planFor = (schema: string, table: string): TablePlan => {
    const key = relationKey(schema, table);
    let plan = plans.get(key);
    if (!plan) plans.set(key, (plan = { key, schema, table, fields: new Map(), filters: [], denyAll: false }));
    return plan;
  };
  for (const policy of policies) {
    // A filter without a condition of its own applies to whom its policy applies (any rule, or a rule-less policy).
    const policyApplies = policy.rules.length === 0 || policy.rules.some((r) => matches(r.condition, who));
    for (const rule of policy.rules) {
      if (!matches(rule.condition, who)) continue;
      for (const field of rule.fields) {
        const plan = planFor(field.schema, field.table);
        // The first applicable rule for a field wins, in configuration order.
        if (!plan.fields.has(field.field)) plan.fields.set(field.field, { policy, rule, field, transformation: rule.transformation });
      }
    }
    for (const f of policy.filters) {
      if (f.condition ? !matches(f.condition, who) : !policyApplies) continue;
      planFor(f.schema, f.table).filters.push({ policy, field: f, expression: f.expression });
    }
  }
  if (rlacFilterBehaviour === 'DENY_ACCESS') {
    for (const key of protectedTables) {
      const [schema, table] = splitKey(key);
      const plan = planFor(schema, table);
      if (plan.filters.length === 0) plan.denyAll = true;
    }
  }
  return { protectedTables, plans, masked: plans.size > 0 };
}

function splitKey(key: string): [string, string] {
  const dot = key.indexOf('.');
  return [key.slice(0, dot), key.slice(dot + 1)];
}

/** The seed's reason text for a failed retrieval: "Failed to retrieve policies. …". */
export const POLICY_RETRIEVAL_PREFIX = 'Failed to retrieve policies. ';

/**
 * Where policies come from: the configuration, or a URL answering JSON (`[policy…]` or `{policies:[…]}`) that is
 * re-read after `refreshSeconds`. A failed retrieval is never papered over with stale policies: queries are refused.
 */
export class PolicySource {
  private cached: { policies: PolicyConfig[]; at: number; version: number } | undefined;
  private fetching: Promise<PolicyConfig[]> | undefined;
  private version = 0;

  constructor(
    private readonly fixed: PolicyConfig[] | undefined,
    private readonly remote: { url: string; refreshSeconds: number; timeoutMs: number } | undefined,
  ) {
    if (fixed) this.cached = { policies: fixed, at: Infinity, version: 0 };
  }

  /** The policies and a version that changes when they do; synchronous while the cache is fresh. */
  current(): { policies: PolicyConfig[]; version: number } | Promise<{ policies: PolicyConfig[]; version: number }> {
    const c = this.cached;
    if (c && (this.fixed || Date.now() - c.at < this.remote!.refreshSeconds * 1000)) return c;
    return this.fetch().then(() => this.cached!);
  }

  /** How much longer the current policies hold before they are fetched again; -1 for policies from the config. */
  freshForMs(): number {
    if (this.fixed) return -1;
    const c = this.cached;
    return c ? Math.max(0, this.remote!.refreshSeconds * 1000 - (Date.now() - c.at)) : 0;
  }

  /** Known policies without fetching (the catalog uses it to know which tables to describe). */
  known(): PolicyConfig[] {
    return this.cached?.policies ?? [];
  }

  private fetch(): Promise<PolicyConfig[]> {
    this.fetching ??= this.fetchOnce().finally(() => (this.fetching = undefined));
    return this.fetching;
  }

  private async fetchOnce(): Promise<PolicyConfig[]> {
    const { url, timeoutMs } = this.remote!;
    let body: unknown;
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), headers: { accept: 'application/json' } });
      if (res.status >= 500) throw new Error('Internal server error');
      if (!res.ok) throw new Error(`HTTP ${res.status} from the policy source`);
      body = await res.json();
    } catch (err) {
      this.cached = undefined;
      const cause = (err as { cause?: { message?: string } }).cause?.message;
      throw new DataProxyError('POLICY_RETRIEVAL', POLICY_RETRIEVAL_PREFIX + (cause ?? (err as Error).message));
    }
    let policies: PolicyConfig[];
    try {
      policies = parsePolicyList(body, url);
    } catch (err) {
      this.cached = undefined;
      throw new DataProxyError('POLICY_RETRIEVAL', POLICY_RETRIEVAL_PREFIX + (err as Error).message);
    }
    const changed = JSON.stringify(policies) !== JSON.stringify(this.cached?.policies);
    if (changed) this.version++;
    this.cached = { policies, at: Date.now(), version: this.version };
    return policies;
  }
}
