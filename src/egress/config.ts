import { readFileSync } from 'node:fs';
import ipaddr from 'ipaddr.js';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { splitHostPort } from '../telemetry/index.ts';

/**
 * The egress configuration (issue 5): policies with allow rules, sources importing them, a resolver, limits and
 * timeouts. Everything is checked at load so a bad value is reported with its path (`policies[1].allow[0].cidr`),
 * and the running proxy only ever sees a config that passed.
 */
export type EgressConfigErrorCode = 'READ' | 'PARSE' | 'INVALID';

export class EgressConfigError extends Error {
  constructor(
    readonly code: EgressConfigErrorCode,
    message: string,
    /** `path: problem` lines, one per bad value. */
    readonly issues: string[] = [],
  ) {
    super(message);
    this.name = 'EgressConfigError';
  }
}

export interface PortRange {
  from: number;
  to: number;
}

export type AllowRule =
  | { kind: 'host'; host: string; wildcard: boolean; ports: PortRange[] }
  | { kind: 'cidr'; cidr: string; network: [ipaddr.IPv4 | ipaddr.IPv6, number]; ports: PortRange[] };

export interface AgentRef {
  id: string;
  address: string;
  host: string;
  port: number;
}

export interface EgressPolicy {
  id: string;
  type: 'direct' | 'agent-proxy';
  agents: AgentRef[];
  allow: AllowRule[];
  /** Domain-fronting guard: inside a CONNECT tunnel the TLS SNI must name the allowed host. */
  requireSni: boolean;
}

export interface EgressSource {
  id: string;
  credentials?: { username: string; password: string };
  /** A dedicated HTTP proxy listener: every connection on it is this source, no credentials asked. */
  listen?: string;
  /** A dedicated SOCKS5 listener (no authentication method) for this source. */
  socks5?: string;
  policies: string[];
  maxConnections: number;
}

export interface EgressConfig {
  listen: string;
  socks5?: string;
  resolver: { hosts: Record<string, string[]>; system: boolean; timeoutMs: number };
  policies: EgressPolicy[];
  sources: EgressSource[];
  timeouts: { connectMs: number; idleMs: number; handshakeMs: number; drainMs: number };
  limits: { maxHeaderBytes: number; maxConnectionsPerSource: number };
  agentHealth: { intervalMs: number; timeoutMs: number };
}

const listenAddress = z.string().refine((s) => {
  try {
    splitHostPort(s);
    return true;
  } catch {
    return false;
  }
}, 'must be HOST:PORT or [IPv6]:PORT');

const portSpec = z.union([
  z.number().int().min(1).max(65535),
  z
    .string()
    .regex(/^\d{1,5}(-\d{1,5})?$/, 'must be a port or a range "FROM-TO"')
    .refine((s) => {
      const [from, to = from] = s.split('-').map(Number) as [number, number?];
      return from >= 1 && to <= 65535 && from <= to;
    }, 'port range must satisfy 1 <= FROM <= TO <= 65535'),
]);

const hostPattern = /^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$/i;

const allowRule = z
  .object({
    host: z
      .string()
      .max(253)
      .regex(hostPattern, 'must be a host name or "*." followed by a domain')
      .refine((s) => !ipaddr.isValid(s), 'is an IP address: write it as a cidr rule')
      .optional(),
    cidr: z
      .string()
      .refine((s) => parseCidr(s) !== undefined, 'must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32')
      .optional(),
    ports: z.array(portSpec).min(1, 'list at least one port or range'),
  })
  .strict()
  .refine((r) => (r.host === undefined) !== (r.cidr === undefined), 'a rule has exactly one of host or cidr');

const schema = z
  .object({
    listen: listenAddress.default('127.0.0.1:3128'),
    socks5: listenAddress.optional(),
    resolver: z
      .object({
        hosts: z.record(z.string(), z.array(z.string().refine((s) => ipaddr.isValid(s), 'must be an IP address')).min(1)).default({}),
        system: z.boolean().optional(),
        timeout_ms: z.number().int().positive().max(60_000).default(5000),
      })
      .strict()
      .default({ hosts: {}, timeout_ms: 5000 }),
    policies: z
      .array(
        z
          .object({
            id: z.string().min(1).max(256),
            type: z.enum(['direct', 'agent-proxy']),
            agents: z.array(z.object({ id: z.string().min(1).max(256), address: listenAddress }).strict()).optional(),
            require_sni: z.boolean().default(false),
            allow: z.array(allowRule).min(1, 'a policy allows at least one destination'),
          })
          .strict(),
      )
      .min(1),
    sources: z
      .array(
        z
          .object({
            id: z.string().min(1).max(256),
            credentials: z.object({ username: z.string().min(1).max(255), password: z.string().max(255) }).strict().optional(),
            listen: listenAddress.optional(),
            socks5: listenAddress.optional(),
            policies: z.array(z.string()).min(1, 'a source imports at least one policy'),
            max_connections: z.number().int().positive().optional(),
          })
          .strict(),
      )
      .min(1),
    timeouts: z
      .object({
        connect_ms: z.number().int().positive().default(10_000),
        idle_ms: z.number().int().positive().default(300_000),
        handshake_ms: z.number().int().positive().default(10_000),
        drain_ms: z.number().int().nonnegative().default(30_000),
      })
      .strict()
      .default({ connect_ms: 10_000, idle_ms: 300_000, handshake_ms: 10_000, drain_ms: 30_000 }),
    limits: z
      .object({
        max_header_bytes: z.number().int().min(1024).max(1024 * 1024).default(16 * 1024),
        max_connections_per_source: z.number().int().positive().default(1024),
      })
      .strict()
      .default({ max_header_bytes: 16 * 1024, max_connections_per_source: 1024 }),
    agent_health: z
      .object({
        interval_ms: z.number().int().positive().default(2000),
        timeout_ms: z.number().int().positive().default(1000),
      })
      .strict()
      .default({ interval_ms: 2000, timeout_ms: 1000 }),
  })
  .strict();

type RawConfig = z.infer<typeof schema>;

/** `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128). */
export function parseCidr(text: string): [ipaddr.IPv4 | ipaddr.IPv6, number] | undefined {
  try {
    if (!text.includes('/')) {
      const address = ipaddr.parse(text);
      return [address, address.kind() === 'ipv4' ? 32 : 128];
    }
    if (!ipaddr.isValidCIDR(text)) return undefined;
    return ipaddr.parseCIDR(text);
  } catch {
    return undefined;
  }
}

function parsePorts(specs: (number | string)[]): PortRange[] {
  return specs.map((spec) => {
    if (typeof spec === 'number') return { from: spec, to: spec };
    const [from, to = from] = spec.split('-').map(Number) as [number, number?];
    return { from, to };
  });
}

function pathOf(path: PropertyKey[]): string {
  let out = '';
  for (const part of path) out += typeof part === 'number' ? `[${part}]` : `${out ? '.' : ''}${String(part)}`;
  return out || '(top level)';
}

/** Cross-references zod cannot see: unknown policy ids, duplicate ids and usernames, agents on the wrong type. */
function crossCheck(raw: RawConfig): string[] {
  const issues: string[] = [];
  const policyIds = new Map<string, number>();
  raw.policies.forEach((p, i) => {
    if (policyIds.has(p.id)) issues.push(`policies[${i}].id: duplicate policy id "${p.id}" (also policies[${policyIds.get(p.id)}])`);
    policyIds.set(p.id, i);
    if (p.type === 'agent-proxy' && !p.agents?.length) issues.push(`policies[${i}].agents: an agent-proxy policy lists at least one agent`);
    if (p.type === 'direct' && p.agents?.length) issues.push(`policies[${i}].agents: a direct policy has no agents`);
    const agentIds = new Set<string>();
    p.agents?.forEach((a, j) => {
      if (agentIds.has(a.id)) issues.push(`policies[${i}].agents[${j}].id: duplicate agent id "${a.id}"`);
      agentIds.add(a.id);
    });
    if (p.require_sni && !p.allow.some((r) => r.host !== undefined)) {
      issues.push(`policies[${i}].require_sni: needs at least one host rule to match the SNI against`);
    }
  });
  const sourceIds = new Set<string>();
  const usernames = new Map<string, number>();
  const listeners = new Map<string, string>([[raw.listen, 'listen']]);
  if (raw.socks5) listeners.set(raw.socks5, 'socks5');
  raw.sources.forEach((s, i) => {
    if (sourceIds.has(s.id)) issues.push(`sources[${i}].id: duplicate source id "${s.id}"`);
    sourceIds.add(s.id);
    s.policies.forEach((id, j) => {
      if (!policyIds.has(id)) issues.push(`sources[${i}].policies[${j}]: no policy has id "${id}"`);
    });
    if (!s.credentials && !s.listen && !s.socks5) {
      issues.push(`sources[${i}]: a source is identified by credentials, a dedicated listen or a dedicated socks5 listener`);
    }
    if (s.credentials) {
      const seen = usernames.get(s.credentials.username);
      if (seen !== undefined) issues.push(`sources[${i}].credentials.username: also used by sources[${seen}]`);
      usernames.set(s.credentials.username, i);
    }
    for (const key of ['listen', 'socks5'] as const) {
      const address = s[key];
      if (!address) continue;
      const other = listeners.get(address);
      // Port 0 asks the system for a fresh port each time, so it never collides.
      if (other && !address.endsWith(':0')) issues.push(`sources[${i}].${key}: ${address} is already used by ${other}`);
      listeners.set(address, `sources[${i}].${key}`);
    }
  });
  return issues;
}

function normalize(raw: RawConfig): EgressConfig {
  return {
    listen: raw.listen,
    ...(raw.socks5 ? { socks5: raw.socks5 } : {}),
    resolver: {
      hosts: Object.fromEntries(Object.entries(raw.resolver.hosts).map(([name, addresses]) => [canonicalHost(name), addresses])),
      // A static map alone is what air-gapped sites and tests want; the system resolver is the default otherwise.
      system: raw.resolver.system ?? Object.keys(raw.resolver.hosts).length === 0,
      timeoutMs: raw.resolver.timeout_ms,
    },
    policies: raw.policies.map((p) => ({
      id: p.id,
      type: p.type,
      requireSni: p.require_sni,
      agents: (p.agents ?? []).map((a) => ({ id: a.id, address: a.address, ...splitHostPort(a.address) })),
      allow: p.allow.map((r): AllowRule => {
        const ports = parsePorts(r.ports);
        if (r.cidr !== undefined) return { kind: 'cidr', cidr: r.cidr, network: parseCidr(r.cidr)!, ports };
        const host = canonicalHost(r.host!);
        const wildcard = host.startsWith('*.');
        return { kind: 'host', host: wildcard ? host.slice(2) : host, wildcard, ports };
      }),
    })),
    sources: raw.sources.map((s) => ({
      id: s.id,
      ...(s.credentials ? { credentials: s.credentials } : {}),
      ...(s.listen ? { listen: s.listen } : {}),
      ...(s.socks5 ? { socks5: s.socks5 } : {}),
      policies: s.policies,
      maxConnections: s.max_connections ?? raw.limits.max_connections_per_source,
    })),
    timeouts: {
      connectMs: raw.timeouts.connect_ms,
      idleMs: raw.timeouts.idle_ms,
      handshakeMs: raw.timeouts.handshake_ms,
      drainMs: raw.timeouts.drain_ms,
    },
    limits: { maxHeaderBytes: raw.limits.max_header_bytes, maxConnectionsPerSource: raw.limits.max_connections_per_source },
    agentHealth: { intervalMs: raw.agent_health.interval_ms, timeoutMs: raw.agent_health.timeout_ms },
  };
}

/** Lower case, no trailing dot: the one spelling host names are compared in. */
export function canonicalHost(host: string): string {
  const lower = host.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

/** Validates an already parsed document (YAML or JSON); throws `EgressConfigError` listing every bad path. */
export function parseEgressConfig(document: unknown, origin = 'config'): EgressConfig {
  const result = schema.safeParse(document);
  if (!result.success) {
    const issues = result.error.issues.map((issue) => `${pathOf(issue.path)}: ${issue.message}`);
    throw new EgressConfigError('INVALID', `${origin}: invalid egress config\n  ${issues.join('\n  ')}`, issues);
  }
  const issues = crossCheck(result.data);
  if (issues.length) throw new EgressConfigError('INVALID', `${origin}: invalid egress config\n  ${issues.join('\n  ')}`, issues);
  return normalize(result.data);
}

export function parseEgressYaml(text: string, origin = 'config'): EgressConfig {
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length) {
    const first = doc.errors[0]!;
    const where = first.linePos?.[0] ? ` at line ${first.linePos[0].line}, column ${first.linePos[0].col}` : '';
    throw new EgressConfigError('PARSE', `${origin}: YAML error${where}: ${first.message.split('\n')[0]}`);
  }
  return parseEgressConfig(doc.toJS(), origin);
}

export function loadEgressConfig(file: string): EgressConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new EgressConfigError('READ', `${file}: cannot read config: ${(err as Error).message}`);
  }
  return parseEgressYaml(text, file);
}
