/**
 * The `custos dataproxy --config FILE` YAML (issue 6's shape, extended, never renamed). Validation errors name the
 * path (`policies[0].rules[1].transformation`). Plain passwords become SCRAM verifiers at load and are dropped.
 */
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { DataProxyError } from './errors.ts';
import { createVerifier, parseVerifier, type ScramVerifier } from './scram.ts';
import { compileTokenPattern } from './tokens.ts';
import { parseExpression } from './sql.ts';

const name = z.string().min(1).max(200);

const tokenParameters = z.strictObject({
  regex: z.string().min(1).max(500),
  consistent: z.boolean().optional(),
  consistencyGroupId: z.string().max(200).optional(),
  watermarkingRegex: z.string().max(500).optional(),
  transformationName: z.string().optional(),
});

export const singleFieldTransformationSchema = z.union([
  z.strictObject({ constant: z.strictObject({ value: z.union([z.string(), z.number(), z.boolean()]) }), transformationName: z.string().optional() }),
  z.strictObject({ drop: z.strictObject({}), transformationName: z.string().optional() }),
  z.strictObject({
    generalizeDate: z.strictObject({ granularity: z.enum(['year', 'quarter', 'month', 'week', 'day', 'hour']).default('year') }),
    transformationName: z.string().optional(),
  }),
  z.strictObject({ numericRegex: tokenParameters, transformationName: z.string().optional() }),
  z.strictObject({ redactWithNull: z.strictObject({}), transformationName: z.string().optional() }),
  z.strictObject({ regex: tokenParameters, transformationName: z.string().optional() }),
  z.strictObject({ retain: z.strictObject({}), transformationName: z.string().optional() }),
  z.strictObject({
    truncate: z.strictObject({
      length: z.number().int().min(0).max(100_000),
      preserveSelectedCharacters: z.boolean().default(true),
      truncateFromStart: z.boolean().default(true),
    }),
    transformationName: z.string().optional(),
  }),
]);
export type SingleFieldTransformationConfig = z.infer<typeof singleFieldTransformationSchema>;

const cellLevelSchema = z.strictObject({
  ifAndElseIfs: z.array(z.strictObject({ expression: z.string().min(1).max(2000), transformation: singleFieldTransformationSchema })).min(1).max(50),
  else: singleFieldTransformationSchema.default({ redactWithNull: {} }),
});
export type CellLevelTransformationConfig = z.infer<typeof cellLevelSchema>;

const transformationSchema = z.union([singleFieldTransformationSchema, cellLevelSchema]);
export type TransformationConfig = z.infer<typeof transformationSchema>;

const conditionSchema = z.strictObject({
  users: z.array(name).optional(),
  groups: z.array(name).optional(),
  projects: z.array(name).optional(),
});
export type RuleCondition = z.infer<typeof conditionSchema>;

const fieldSchema = z.strictObject({
  catalog: name.optional(),
  schema: name,
  table: name,
  field: name,
  assetId: z.string().optional(),
  assetName: z.string().optional(),
});
export type FieldConfig = z.infer<typeof fieldSchema>;

const policySchema = z.strictObject({
  id: name,
  name: name,
  rules: z.array(z.strictObject({
    id: name,
    name: name,
    condition: conditionSchema.default({}),
    fields: z.array(fieldSchema).min(1),
    transformation: transformationSchema,
  })).default([]),
  filters: z.array(fieldSchema.omit({ field: true }).extend({
    field: name,
    expression: z.string().min(1).max(2000),
    condition: conditionSchema.optional(),
  })).default([]),
});
export type PolicyConfig = z.infer<typeof policySchema>;
export const policyListSchema = z.array(policySchema);

const userSchema = z.strictObject({
  name,
  id: z.string().optional(),
  password: z.string().min(1).optional(),
  scramVerifier: z.string().optional(),
  groups: z.array(name).default([]),
}).refine((u) => (u.password === undefined) !== (u.scramVerifier === undefined), { message: 'give exactly one of password or scramVerifier' });

const configSchema = z.strictObject({
  listen: z.string().default('127.0.0.1:6432'),
  upstream: z.string().min(1).default('embedded'),
  catalog: name.default('acmedb'),
  tenant: z.string().nullable().default(null),
  dataPlane: z.strictObject({ id: name, namespace: z.string().optional(), pod: z.string().optional(), node: z.string().optional() }).default({ id: 'dp-1' }),
  connection: z.strictObject({ id: name, name: name }).default({ id: 'conn-1', name: 'postgres' }),
  project: z.strictObject({ id: name, name: name.optional() }).default({ id: 'custos' }),
  audit: z.strictObject({
    verbose: z.boolean().default(false),
    /** Adds requestData.context, fieldTriggers, dataPlane and rlacFilterBehaviour (described by the seed, absent from its examples). */
    includeContext: z.boolean().default(false),
    /** Fills initiator.sourceIp with the client address (the seed's examples print null). */
    reportSourceIp: z.boolean().default(false),
  }).default({ verbose: false, includeContext: false, reportSourceIp: false }),
  rlacFilterBehaviour: z.enum(['DENY_ACCESS', 'ALLOW_ACCESS']).default('ALLOW_ACCESS'),
  groups: z.array(z.strictObject({ name, id: z.string().optional() })).default([]),
  users: z.array(userSchema).default([]),
  policies: policyListSchema.optional(),
  policySource: z.strictObject({ url: z.url(), refreshSeconds: z.number().positive().max(86_400).default(30), timeoutMs: z.number().int().positive().max(60_000).default(3000) }).optional(),
  tokenization: z.strictObject({ secret: z.string().min(16) }).optional(),
  tls: z.strictObject({ cert: z.string(), key: z.string() }).optional(),
  limits: z.strictObject({ maxConnections: z.number().int().positive().default(1000), maxQueryBytes: z.number().int().positive().default(1_000_000) })
    .default({ maxConnections: 1000, maxQueryBytes: 1_000_000 }),
}).refine((c) => !(c.policies && c.policySource), { message: 'give policies or policySource, not both', path: ['policySource'] });

export interface ProxyUser {
  name: string;
  id: string;
  groups: string[];
  verifier: ScramVerifier;
}

export type DataProxyConfig = Omit<z.infer<typeof configSchema>, 'users'> & { users: ProxyUser[]; tlsFiles?: { cert: Buffer; key: Buffer } };

function pathText(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : `${out ? '.' : ''}${String(p)}`;
  return out || '(root)';
}

function zodMessage(error: z.ZodError, where: string): string {
  const issue = error.issues[0]!;
  return `${where}: ${pathText(issue.path)}: ${issue.message}`;
}

/** Checks what zod cannot: SQL expressions parse as one expression, token patterns compile. */
export function checkPolicies(policies: PolicyConfig[], where: string): void {
  policies.forEach((policy, p) => {
    policy.rules.forEach((rule, r) => {
      const at = `${where}: policies[${p}].rules[${r}].transformation`;
      const t = rule.transformation;
      const singles = 'ifAndElseIfs' in t ? [...t.ifAndElseIfs.map((b) => b.transformation), t.else] : [t];
      if ('ifAndElseIfs' in t) {
        t.ifAndElseIfs.forEach((b, i) => expressionOrThrow(b.expression, `${at}.ifAndElseIfs[${i}].expression`));
        if (singles.some((s) => 'drop' in s)) throw new DataProxyError('CONFIG', `${at}: drop cannot be a cell-level branch`);
      }
      for (const s of singles) {
        const token = 'regex' in s ? s.regex : 'numericRegex' in s ? s.numericRegex : undefined;
        if (!token) continue;
        try {
          compileTokenPattern(token.regex);
          if (token.watermarkingRegex) compileTokenPattern(token.watermarkingRegex);
        } catch (err) {
          throw new DataProxyError('CONFIG', `${at}: ${(err as Error).message}`);
        }
      }
    });
    policy.filters.forEach((f, i) => expressionOrThrow(f.expression, `${where}: policies[${p}].filters[${i}].expression`));
  });
}

function expressionOrThrow(expression: string, at: string): void {
  try {
    parseExpression(expression);
  } catch (err) {
    throw new DataProxyError('CONFIG', `${at}: ${(err as Error).message}`);
  }
}

export function parsePolicyList(value: unknown, where: string): PolicyConfig[] {
  const list = Array.isArray(value) ? value : (value as { policies?: unknown } | null)?.policies;
  const parsed = policyListSchema.safeParse(list);
  if (!parsed.success) throw new DataProxyError('CONFIG', zodMessage(parsed.error, where));
  checkPolicies(parsed.data, where);
  return parsed.data;
}

/** Validates a parsed YAML document; `where` names the file in messages. */
export async function buildConfig(document: unknown, where: string): Promise<DataProxyConfig> {
  const parsed = configSchema.safeParse(document ?? {});
  if (!parsed.success) throw new DataProxyError('CONFIG', zodMessage(parsed.error, where));
  const { users, ...rest } = parsed.data;
  if (!rest.policies && !rest.policySource) rest.policies = [];
  if (rest.policies) checkPolicies(rest.policies, where);
  const seen = new Set<string>();
  const proxyUsers = users.map((u, i): ProxyUser => {
    if (seen.has(u.name)) throw new DataProxyError('CONFIG', `${where}: users[${i}].name: duplicate user "${u.name}"`);
    seen.add(u.name);
    let verifier: ScramVerifier;
    try {
      verifier = u.password !== undefined ? createVerifier(u.password) : parseVerifier(u.scramVerifier!);
    } catch (err) {
      throw new DataProxyError('CONFIG', `${where}: users[${i}].scramVerifier: ${(err as Error).message}`);
    }
    return { name: u.name, id: u.id ?? u.name, groups: u.groups, verifier };
  });
  const config: DataProxyConfig = { ...rest, users: proxyUsers };
  if (rest.tls) config.tlsFiles = { cert: await readFile(rest.tls.cert), key: await readFile(rest.tls.key) };
  return config;
}

export async function loadConfig(file: string): Promise<DataProxyConfig> {
  let document: unknown;
  try {
    document = parseYaml(await readFile(file, 'utf8'));
  } catch (err) {
    throw new DataProxyError('CONFIG', `${file}: ${(err as Error).message}`);
  }
  return buildConfig(document, file);
}
