import ipaddr from 'ipaddr.js';
import { canonicalHost, type AllowRule, type EgressConfig, type EgressPolicy, type EgressSource, type PortRange } from './config.ts';

/**
 * The egress decision, a pure function of (source's policies, destination, resolved addresses) returning allow or
 * deny with a reason, in the manner of Smokescreen's acl/v1. Precedence (docs/egress.md, "Decision"):
 *
 *  1. Only the policies the source imports are consulted, in the order the source lists them; the first policy that
 *     allows the destination is the one recorded.
 *  2. A rule matches only when its ports include the destination port.
 *  3. A policy allows a destination when EVERY address it resolves to is allowed by that same policy: an address
 *     inside one of the policy's CIDR rules is allowed whatever its range (naming it is the explicit opt-in);
 *     otherwise it is allowed when the requested name matches a host rule and the address is publicly routable.
 *  4. Refused unless a CIDR rule names them: loopback, private (RFC 1918, ULA), link-local (169.254.169.254
 *     included), CGNAT, unspecified, multicast, broadcast, reserved and documentation ranges, and IPv6 that embeds
 *     IPv4 (NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo 2001::/32, IPv4-compatible). IPv4-mapped IPv6
 *     (::ffff:a.b.c.d) is the IPv4 address itself and is judged (and dialled) as IPv4.
 *  5. Host rules match names only, never IP literals; `*.example.com` matches subdomains at any depth, not the apex.
 *  6. A name is resolved only when some imported policy could allow it, so denied names never reach DNS.
 */

export type DenyReason = 'no_matching_policy' | 'destination_address_refused';

export type Decision =
  | { allowed: true; policy: EgressPolicy; addresses: string[] }
  | { allowed: false; reason: DenyReason; detail: string; policy?: EgressPolicy };

/** The parsed address with IPv4-mapped IPv6 folded to IPv4, or undefined for a name. */
export function ipLiteral(host: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (!ipaddr.isValid(bare)) return undefined;
  // ipaddr.isValid accepts shorthand like "127.1" and "0x7f.1"; only the four-part dotted quad is an IPv4 literal.
  if (!bare.includes(':') && !ipaddr.IPv4.isValidFourPartDecimal(bare)) return undefined;
  const address = ipaddr.parse(bare);
  return address.kind() === 'ipv6' && (address as ipaddr.IPv6).isIPv4MappedAddress()
    ? (address as ipaddr.IPv6).toIPv4Address()
    : address;
}

/** The special range an address belongs to (`loopback`, `linkLocal`, `teredo`, …), or undefined when public. */
export function refusedRangeOf(address: ipaddr.IPv4 | ipaddr.IPv6): string | undefined {
  const range = address.range();
  // ipaddr.js calls the deprecated IPv4-compatible block ::/96 unicast; it embeds IPv4 like the others (RFC 4291 §2.5.5.1).
  if (range === 'unicast' && address.kind() === 'ipv6' && address.match(IPV4_COMPATIBLE, 96)) return 'ipv4Compatible';
  return range === 'unicast' ? undefined : range;
}

const IPV4_COMPATIBLE = ipaddr.parse('::');

function portMatches(ports: PortRange[], port: number): boolean {
  return ports.some((r) => port >= r.from && port <= r.to);
}

function hostMatches(rule: AllowRule & { kind: 'host' }, name: string): boolean {
  return rule.wildcard ? name.endsWith(`.${rule.host}`) : name === rule.host;
}

function cidrContains(rule: AllowRule & { kind: 'cidr' }, address: ipaddr.IPv4 | ipaddr.IPv6): boolean {
  const [network, bits] = rule.network;
  return address.kind() === network.kind() && address.match(network, bits);
}

export function sourcePolicies(config: EgressConfig, source: EgressSource): EgressPolicy[] {
  return source.policies.map((id) => config.policies.find((p) => p.id === id)).filter((p): p is EgressPolicy => p !== undefined);
}

/**
 * Policies that could allow `host:port` before anything is resolved: a host rule matches the name, or a CIDR rule
 * covers the port (an IP literal must also fall inside it). Empty means deny without touching DNS.
 */
export function candidatePolicies(policies: EgressPolicy[], host: string, port: number): EgressPolicy[] {
  const literal = ipLiteral(host);
  const name = canonicalHost(host);
  return policies.filter((policy) =>
    policy.allow.some((rule) => {
      if (!portMatches(rule.ports, port)) return false;
      if (rule.kind === 'cidr') return literal === undefined || cidrContains(rule, literal);
      return literal === undefined && hostMatches(rule, name);
    }),
  );
}

function addressVerdict(
  policy: EgressPolicy,
  name: string | undefined,
  port: number,
  address: ipaddr.IPv4 | ipaddr.IPv6,
): { ok: true } | { ok: false; why: string } {
  for (const rule of policy.allow) {
    if (rule.kind === 'cidr' && portMatches(rule.ports, port) && cidrContains(rule, address)) return { ok: true };
  }
  const named = name !== undefined && policy.allow.some((r) => r.kind === 'host' && portMatches(r.ports, port) && hostMatches(r, name));
  if (!named) return { ok: false, why: `${address.toString()} is not inside a cidr rule of ${policy.id} for port ${port}` };
  const range = refusedRangeOf(address);
  if (range) return { ok: false, why: `${address.toString()} is ${range} and no cidr rule of ${policy.id} names it` };
  return { ok: true };
}

/** Decides for resolved (or literal) addresses; every address must pass within one policy. */
export function decide(candidates: EgressPolicy[], host: string, port: number, addresses: string[]): Decision {
  if (candidates.length === 0) return { allowed: false, reason: 'no_matching_policy', detail: `no imported policy allows ${host} port ${port}` };
  const literal = ipLiteral(host);
  const name = literal ? undefined : canonicalHost(host);
  const parsed = addresses.map((a) => ipLiteral(a)).filter((a): a is ipaddr.IPv4 | ipaddr.IPv6 => a !== undefined);
  let firstRefusal: { policy: EgressPolicy; why: string } | undefined;
  for (const policy of candidates) {
    const refusal = parsed.map((a) => addressVerdict(policy, name, port, a)).find((v) => !v.ok);
    if (!refusal) return { allowed: true, policy, addresses: parsed.map((a) => a.toString()) };
    if (!refusal.ok) firstRefusal ??= { policy, why: refusal.why };
  }
  return { allowed: false, reason: 'destination_address_refused', detail: firstRefusal!.why, policy: firstRefusal!.policy };
}

/**
 * Domain-fronting guard for `require_sni` policies: the TLS server name must be the requested name, or, when an IP
 * literal was requested, a name a host rule of the policy allows on that port.
 */
export function sniAllowed(policy: EgressPolicy, requestedHost: string, port: number, sni: string): boolean {
  const serverName = canonicalHost(sni);
  if (!ipLiteral(requestedHost)) return serverName === canonicalHost(requestedHost);
  return policy.allow.some((r) => r.kind === 'host' && portMatches(r.ports, port) && hostMatches(r, serverName));
}
