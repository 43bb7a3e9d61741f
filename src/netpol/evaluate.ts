import { cidrContains, ipv4ToInt } from './ip.ts';
import { type Cluster, type CompiledPolicy, type Direction, type Endpoint, type Pod, type PolicyPeer, type PolicyPort, type PolicyRule, PROTOCOL_CODES, type Protocol } from './model.ts';

/**
 * Kubernetes NetworkPolicy semantics with GKE Dataplane V2's specifics: egress is decided at the source pod, ingress
 * at the destination pod, a connection denied on egress never reaches ingress; ipBlock never matches pod IPs;
 * traffic between a pod and its own node is always allowed; a pod's traffic to itself is never blocked.
 */
export interface Connection {
  srcIp: string;
  destIp: string;
  /** The addresses as unsigned 32-bit integers when IPv4 (-1 for IPv6), when the parser already computed them. */
  srcIpv4?: number;
  destIpv4?: number;
  srcPort?: number;
  destPort?: number;
  protocol: Protocol;
}

export type { Endpoint };

/** One direction's decision; the pod enforcing it is the source for egress, the destination for ingress. */
export interface DirectionVerdict {
  direction: Direction;
  /** Whether any policy of this direction selects the enforced pod; records are written only then. */
  isolated: boolean;
  allowed: boolean;
  /** Every policy with a rule that matches the connection (the record's `policies`). */
  allowing: CompiledPolicy[];
  /** Allowed because the other end is the enforced pod's own node (kubelet probes): `"policies":[{"name":""}]`. */
  fromOwnNode: boolean;
  /** Why, step by step; only when asked for (`explain`). */
  reasons?: string[];
}

export interface Verdict {
  src: Endpoint;
  dest: Endpoint;
  /** A pod talking to itself: never blocked, never logged. */
  selfTraffic: boolean;
  allowed: boolean;
  egress?: DirectionVerdict;
  ingress?: DirectionVerdict;
}

export function resolveEndpoint(cluster: Cluster, ip: string, ipv4 = ipv4ToInt(ip)): Endpoint {
  return (ipv4 >= 0 ? cluster.endpointsByIpv4.get(ipv4) : cluster.endpointsByIp.get(ip)) ?? { kind: 'external', ip };
}

export function describeEndpoint(e: Endpoint): string {
  if (e.kind === 'pod') return `pod ${e.pod.namespace}/${e.pod.name} (${e.ip})`;
  if (e.kind === 'node') return `node ${e.node.name} (${e.ip})`;
  return `${e.ip} (outside the cluster's pods and nodes)`;
}

function portMatches(entry: PolicyPort, conn: Connection, destPod: Pod | undefined): boolean {
  // ICMP has no ports, so only rules without a `ports` list allow it.
  if (entry.protocol !== conn.protocol) return false;
  if (entry.port === undefined) return true;
  if (conn.destPort === undefined) return false;
  if (typeof entry.port === 'number') return conn.destPort >= entry.port && conn.destPort <= (entry.endPort ?? entry.port);
  // A named port resolves on the destination pod, for the rule's protocol.
  if (!destPod) return false;
  for (const cp of destPod.ports) if (cp.name === entry.port && cp.protocol === entry.protocol && cp.port === conn.destPort) return true;
  return false;
}

function peerMatches(cluster: Cluster, peer: PolicyPeer, policy: CompiledPolicy, remote: Endpoint, remoteIpv4: number): boolean {
  if (peer.kind === 'ipBlock') {
    if (remote.kind === 'pod') return false;
    if (!cidrContains(peer.cidr, remote.ip, remoteIpv4)) return false;
    for (const except of peer.except) if (cidrContains(except, remote.ip, remoteIpv4)) return false;
    return true;
  }
  if (remote.kind !== 'pod') return false;
  const pod = remote.pod;
  if (!peer.namespaceSelector) {
    if (pod.namespace !== policy.namespace) return false;
  } else {
    let inNamespace = peer.namespaceCache.get(pod.namespace);
    if (inNamespace === undefined) {
      inNamespace = peer.namespaceSelector.matches(cluster.namespaceLabels(pod.namespace));
      peer.namespaceCache.set(pod.namespace, inNamespace);
    }
    if (!inNamespace) return false;
  }
  return peer.podSelector.matches(pod.labels);
}

function portsMatch(ports: PolicyPort[], conn: Connection, destPod: Pod | undefined): boolean {
  for (const entry of ports) if (portMatches(entry, conn, destPod)) return true;
  return false;
}

function peersMatch(cluster: Cluster, peers: PolicyPeer[], policy: CompiledPolicy, remote: Endpoint, remoteIpv4: number): boolean {
  for (const peer of peers) if (peerMatches(cluster, peer, policy, remote, remoteIpv4)) return true;
  return false;
}

function ruleMatches(cluster: Cluster, rule: PolicyRule, policy: CompiledPolicy, conn: Connection, remote: Endpoint, remoteIpv4: number, destPod: Pod | undefined): boolean {
  return (!rule.ports || portsMatch(rule.ports, conn, destPod)) && (!rule.peers || peersMatch(cluster, rule.peers, policy, remote, remoteIpv4));
}

/** Why a rule does not match, for `explain` only (the hot path asks `ruleMatches`). */
function mismatchReason(cluster: Cluster, rule: PolicyRule, policy: CompiledPolicy, conn: Connection, remote: Endpoint, remoteIpv4: number, destPod: Pod | undefined): string {
  if (rule.ports && !portsMatch(rule.ports, conn, destPod)) {
    const ports = rule.ports.map((p) => `${p.port ?? 'any'}${p.endPort ? `-${p.endPort}` : ''}/${p.protocol}`).join(', ');
    return conn.protocol === 'icmp' ? `icmp is allowed only by rules without ports (rule has ${ports})` : `port ${conn.destPort}/${conn.protocol} is not in ${ports}`;
  }
  const peers = rule.peers ?? [];
  const note = remote.kind === 'pod' || peers.some((p) => p.kind === 'ipBlock') ? '' : ' (only ipBlock peers match non-pods)';
  return `${describeEndpoint(remote)} matches none of: ${peers.map((p) => p.text + (p.kind === 'ipBlock' && remote.kind === 'pod' ? ' (ipBlock never matches pod IPs)' : '')).join('; ')}${note}`;
}

/** The shared empty `allowing` list: most verdicts have none, and need not allocate one. */
const NONE: CompiledPolicy[] = [];

// Decisions that need no allocation: most pods are not isolated in some direction, and own-node traffic is constant.
const NOT_ISOLATED: Record<Direction, DirectionVerdict> = {
  ingress: { direction: 'ingress', isolated: false, allowed: true, allowing: NONE, fromOwnNode: false },
  egress: { direction: 'egress', isolated: false, allowed: true, allowing: NONE, fromOwnNode: false },
};
const OWN_NODE: Record<Direction, DirectionVerdict> = {
  ingress: { direction: 'ingress', isolated: true, allowed: true, allowing: NONE, fromOwnNode: true },
  egress: { direction: 'egress', isolated: true, allowed: true, allowing: NONE, fromOwnNode: true },
};

function decide(cluster: Cluster, direction: Direction, pod: Pod, remote: Endpoint, remoteIpv4: number, conn: Connection, explain: boolean): DirectionVerdict {
  const policies = cluster.policiesFor(pod, direction);
  const reasons: string[] | undefined = explain ? [] : undefined;
  if (policies.length === 0) {
    reasons?.push(`no ${direction} policy selects ${pod.namespace}/${pod.name}: not isolated for ${direction}, allowed`);
    return withReasons(NOT_ISOLATED[direction], reasons);
  }
  reasons?.push(`${direction} policies selecting ${pod.namespace}/${pod.name}: ${policies.map((p) => `${p.namespace}/${p.name}`).join(', ')}`);
  if (remote.kind === 'node' && remote.node.name === pod.nodeName) {
    reasons?.push(`${describeEndpoint(remote)} is the pod's own node: always allowed (kubelet probes), logged with an empty policy name`);
    return withReasons(OWN_NODE[direction], reasons);
  }
  const cacheKey = reasons ? -1 : verdictCacheKey(remote, remoteIpv4, conn);
  const cache = cacheKey >= 0 ? verdictCacheOf(cluster, pod, direction) : undefined;
  const cached = cache?.get(cacheKey);
  if (cached) return cached;
  const destPod = direction === 'ingress' ? pod : remote.kind === 'pod' ? remote.pod : undefined;
  let allowing = NONE;
  for (const policy of policies) {
    const rules = direction === 'ingress' ? policy.ingress : policy.egress;
    let matched = false;
    if (rules.length === 0) reasons?.push(`${policy.namespace}/${policy.name}: no ${direction} rules (denies all ${direction})`);
    for (let i = 0; i < rules.length && (!matched || reasons); i++) {
      if (ruleMatches(cluster, rules[i]!, policy, conn, remote, remoteIpv4, destPod)) {
        if (!matched) allowing = allowing === NONE ? [policy] : [...allowing, policy];
        matched = true;
        reasons?.push(`${policy.namespace}/${policy.name} ${direction}[${i}]: matches, allows`);
      } else reasons?.push(`${policy.namespace}/${policy.name} ${direction}[${i}]: ${mismatchReason(cluster, rules[i]!, policy, conn, remote, remoteIpv4, destPod)}`);
    }
  }
  const verdict: DirectionVerdict = { direction, isolated: true, allowed: allowing.length > 0, allowing, fromOwnNode: false };
  if (!verdict.allowed) reasons?.push(`no rule of the selecting policies allows it: denied on ${direction}`);
  if (cache) {
    if (++cluster.cachedVerdicts > MAX_CACHED_VERDICTS) {
      cluster.verdictCache.clear();
      cluster.cachedVerdicts = 0;
    }
    cache.set(cacheKey, verdict);
  }
  return withReasons(verdict, reasons);
}

// A top-level function, not a closure: tsx names every closure it creates (`__name`), which is slow on a hot path.
function withReasons(verdict: DirectionVerdict, reasons: string[] | undefined): DirectionVerdict {
  return reasons ? { ...verdict, reasons } : verdict;
}

const MAX_CACHED_VERDICTS = 2_000_000;
/** Remote IPv4 addresses take identities above every pod identity. */
const IPV4_IDENTITY_BASE = 2 ** 31;

/**
 * The verdict of one direction depends only on the enforced pod's identity, the remote's identity (or address, when
 * not a pod), the port and the protocol, so it is computed once per such tuple. -1: not cacheable (IPv6 non-pods).
 */
function verdictCacheKey(remote: Endpoint, remoteIpv4: number, conn: Connection): number {
  const remoteId = remote.kind === 'pod' ? remote.pod.identity : remoteIpv4 >= 0 ? IPV4_IDENTITY_BASE + remoteIpv4 : -1;
  if (remoteId < 0) return -1;
  // < 2^33 · 2^19 = 2^52: exact in a double.
  return remoteId * 524_288 + (conn.destPort ?? 0) * 8 + PROTOCOL_CODES[conn.protocol];
}

function verdictCacheOf(cluster: Cluster, pod: Pod, direction: Direction): Map<number, DirectionVerdict> {
  const key = pod.identity * 2 + (direction === 'ingress' ? 1 : 0);
  let cache = cluster.verdictCache.get(key);
  if (!cache) cluster.verdictCache.set(key, (cache = new Map()));
  return cache;
}

/** The pod enforcing `direction` of a verdict: the source for egress, the destination for ingress. */
export function enforcedPodOf(verdict: Verdict, direction: Direction): Pod {
  const end = direction === 'egress' ? verdict.src : verdict.dest;
  if (end.kind !== 'pod') throw new Error(`no pod enforces ${direction} here`);
  return end.pod;
}

/** The verdict for one connection attempt; `explain` adds the reasons behind each direction's decision. */
export function evaluate(cluster: Cluster, conn: Connection, explain = false): Verdict {
  const srcIpv4 = conn.srcIpv4 ?? ipv4ToInt(conn.srcIp);
  const destIpv4 = conn.destIpv4 ?? ipv4ToInt(conn.destIp);
  const src = resolveEndpoint(cluster, conn.srcIp, srcIpv4);
  const dest = resolveEndpoint(cluster, conn.destIp, destIpv4);
  const verdict: Verdict = { src, dest, selfTraffic: false, allowed: true };
  if (src.kind === 'pod' && dest.kind === 'pod' && src.pod === dest.pod) {
    verdict.selfTraffic = true;
    return verdict;
  }
  if (src.kind === 'pod') {
    verdict.egress = decide(cluster, 'egress', src.pod, dest, destIpv4, conn, explain);
    if (!verdict.egress.allowed) {
      verdict.allowed = false;
      return verdict;
    }
  }
  if (dest.kind === 'pod') {
    verdict.ingress = decide(cluster, 'ingress', dest.pod, src, srcIpv4, conn, explain);
    verdict.allowed = verdict.ingress.allowed;
  }
  return verdict;
}
