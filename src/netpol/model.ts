import type { PolicyActionEndpoint } from '../model/index.ts';
import type { DirectionVerdict } from './evaluate.ts';
import { type Cidr, firstHostOf, Ipv4Table, ipv4ToInt, normalizeIp, parseCidr } from './ip.ts';
import { type LoggingSetting, DEFAULT_LOGGING } from './logging.ts';
import { compileSelector, type Labels, type Selector, selectorProblems } from './selectors.ts';

/**
 * The cluster as NetworkPolicy evaluation sees it, built once per manifest load: namespaces, nodes, pods by IP and
 * policies by namespace, with the per-pod lists of selecting policies computed on first use. A new load builds a
 * new Cluster, so caches never go stale.
 */
export type Protocol = 'tcp' | 'udp' | 'sctp' | 'icmp';
export type Direction = 'ingress' | 'egress';
/** Small numbers for protocols, for numeric cache and aggregation keys. */
export const PROTOCOL_CODES: Readonly<Record<Protocol, number>> = { tcp: 0, udp: 1, sctp: 2, icmp: 3 };

/** What an IP address is to the cluster: one of its pods, one of its nodes, or something outside. */
export type Endpoint =
  | { kind: 'pod'; ip: string; pod: Pod }
  | { kind: 'node'; ip: string; node: Node }
  | { kind: 'external'; ip: string };

export interface Namespace {
  name: string;
  labels: Labels;
  annotations: Labels;
}

export interface Node {
  name: string;
  /** InternalIP/ExternalIP addresses and the `cilium_host` gateway of each pod CIDR. */
  ips: string[];
}

export interface ContainerPort {
  name?: string;
  port: number;
  protocol: Protocol;
}

export interface Pod {
  name: string;
  namespace: string;
  labels: Labels;
  nodeName: string;
  ips: string[];
  ports: ContainerPort[];
  workload?: { name: string; kind: string };
  /** The record's `src`/`dest` for this pod, built once and shared by every record. */
  endpoint: PolicyActionEndpoint;
  /**
   * Pods with the same namespace, labels and named ports get the same verdicts (Cilium's security identity, plus the
   * ports a named-port rule resolves on). Assigned by the Cluster; verdicts are cached per identity pair.
   */
  identity: number;
  /** Lazily filled: the policies selecting this pod per direction (`Cluster.policiesFor`). */
  selectedBy?: { ingress: CompiledPolicy[]; egress: CompiledPolicy[] };
}

export interface PolicyPort {
  protocol: Protocol;
  /** A number, a port name resolved on the destination pod, or undefined for every port of the protocol. */
  port?: number | string;
  endPort?: number;
}

export type PolicyPeer =
  | { kind: 'ipBlock'; cidr: Cidr; except: Cidr[]; text: string }
  /** `namespaceSelector` undefined means the policy's own namespace. */
  | { kind: 'pods'; podSelector: Selector; namespaceSelector?: Selector; text: string; namespaceCache: Map<string, boolean> };

export interface PolicyRule {
  /** Undefined: every peer (the rule had no `from`/`to`, or an empty one). */
  peers?: PolicyPeer[];
  /** Undefined: every port and protocol (no `ports`, or an empty list). */
  ports?: PolicyPort[];
}

export interface CompiledPolicy {
  name: string;
  namespace: string;
  podSelector: Selector;
  types: { ingress: boolean; egress: boolean };
  ingress: PolicyRule[];
  egress: PolicyRule[];
  /** `policy.network.gke.io/enable-logging: "true"`, for delegated allow logging. */
  loggingEnabled: boolean;
  /** The record's `{name, namespace}` for this policy, shared by every record that lists it. */
  ref: { name: string; namespace: string };
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: {
    name?: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    ownerReferences?: { kind?: string; name?: string; controller?: boolean }[];
  };
  spec?: Record<string, unknown>;
  status?: Record<string, unknown>;
}

export const NAMESPACE_NAME_LABEL = 'kubernetes.io/metadata.name';
export const ENABLE_LOGGING_ANNOTATION = 'policy.network.gke.io/enable-logging';
export const ENABLE_DENY_LOGGING_ANNOTATION = 'policy.network.gke.io/enable-deny-logging';

const PROTOCOLS: Record<string, Protocol> = { TCP: 'tcp', UDP: 'udp', SCTP: 'sctp' };
const IANA_SVC_NAME = /^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$/;

function stringMap(value: unknown): Labels {
  const out: Record<string, string> = Object.create(null);
  if (value && typeof value === 'object' && !Array.isArray(value))
    for (const [k, v] of Object.entries(value)) if (typeof v === 'string') out[k] = v;
  return out;
}

function asArray(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

function record(value: unknown): Record<string, unknown> {
  return value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}

// ---- NetworkPolicy validation and compilation (networking.k8s.io/v1, as the API server validates it) ----

function portProblems(raw: unknown, at: string): string[] {
  const p = record(raw);
  const problems: string[] = [];
  const protocol = p['protocol'] ?? 'TCP';
  if (typeof protocol !== 'string' || !(protocol in PROTOCOLS))
    problems.push(`${at}.protocol: Unsupported value: ${JSON.stringify(protocol)}: supported values: "SCTP", "TCP", "UDP"`);
  const port = p['port'];
  if (typeof port === 'number') {
    if (!Number.isInteger(port) || port < 1 || port > 65535) problems.push(`${at}.port: Invalid value: ${port}: must be between 1 and 65535, inclusive`);
  } else if (typeof port === 'string') {
    if (!IANA_SVC_NAME.test(port)) problems.push(`${at}.port: Invalid value: "${port}": must be a valid port name (at most 15 lowercase letters, digits and '-', with at least one letter)`);
  } else if (port !== undefined && port !== null) problems.push(`${at}.port: Invalid value: must be a number or a port name`);
  const endPort = p['endPort'];
  if (endPort !== undefined && endPort !== null) {
    if (typeof port !== 'number') problems.push(`${at}.endPort: Invalid value: ${JSON.stringify(endPort)}: may not be specified when \`port\` is not a number`);
    else if (typeof endPort !== 'number' || !Number.isInteger(endPort) || endPort < 1 || endPort > 65535)
      problems.push(`${at}.endPort: Invalid value: ${JSON.stringify(endPort)}: must be between 1 and 65535, inclusive`);
    else if (endPort < port) problems.push(`${at}.endPort: Invalid value: ${endPort}: must be greater than or equal to \`port\``);
  }
  return problems;
}

function peerProblems(raw: unknown, at: string): string[] {
  const peer = record(raw);
  const hasSelectors = peer['podSelector'] != null || peer['namespaceSelector'] != null;
  const ipBlock = peer['ipBlock'];
  if (ipBlock == null)
    return hasSelectors
      ? [...selectorProblems(peer['podSelector'], `${at}.podSelector`), ...selectorProblems(peer['namespaceSelector'], `${at}.namespaceSelector`)]
      : [`${at}: Required value: must specify a peer`];
  if (hasSelectors) return [`${at}: Forbidden: may not specify more than 1 peer type`];
  const block = record(ipBlock);
  const cidrText = block['cidr'];
  const cidr = typeof cidrText === 'string' ? parseCidr(cidrText) : undefined;
  if (!cidr) return [`${at}.ipBlock.cidr: Invalid value: ${JSON.stringify(cidrText ?? '')}: must be a valid CIDR`];
  const problems: string[] = [];
  asArray(block['except']).forEach((e, j) => {
    const ex = typeof e === 'string' ? parseCidr(e) : undefined;
    if (!ex) problems.push(`${at}.ipBlock.except[${j}]: Invalid value: ${JSON.stringify(e)}: must be a valid CIDR`);
    else if (ex.v6 !== cidr.v6 || ex.bits <= cidr.bits || !cidrContainsCidr(cidr, ex))
      problems.push(`${at}.ipBlock.except[${j}]: Invalid value: "${e}": must be a strict subset of \`cidr\``);
  });
  return problems;
}

function cidrContainsCidr(outer: Cidr, inner: Cidr): boolean {
  if (!inner.v6) return ((inner.network & outer.mask) >>> 0) === outer.network;
  return inner.range![0].match(outer.range!);
}

/** Every problem the API server would report for this NetworkPolicy, as `field: message`. */
export function networkPolicyProblems(obj: KubeObject): string[] {
  const problems: string[] = [];
  const name = obj.metadata?.name;
  if (typeof name !== 'string' || name === '') problems.push('metadata.name: Required value: name or generateName is required');
  const spec = record(obj.spec);
  problems.push(...selectorProblems(spec['podSelector'], 'spec.podSelector'));
  const types = spec['policyTypes'];
  if (types != null) {
    if (!Array.isArray(types)) problems.push('spec.policyTypes: Invalid value: must be a list');
    else {
      types.forEach((t, i) => {
        if (t !== 'Ingress' && t !== 'Egress') problems.push(`spec.policyTypes[${i}]: Unsupported value: ${JSON.stringify(t)}: supported values: "Egress", "Ingress"`);
      });
      if (types.length > 2) problems.push(`spec.policyTypes: Invalid value: ${JSON.stringify(types)}: may not specify more than two policyTypes`);
    }
  }
  for (const direction of ['ingress', 'egress'] as const) {
    const rules = spec[direction];
    if (rules != null && !Array.isArray(rules)) {
      problems.push(`spec.${direction}: Invalid value: must be a list`);
      continue;
    }
    const peersField = direction === 'ingress' ? 'from' : 'to';
    asArray(rules).forEach((rawRule, i) => {
      const rule = record(rawRule);
      asArray(rule['ports']).forEach((p, j) => problems.push(...portProblems(p, `spec.${direction}[${i}].ports[${j}]`)));
      asArray(rule[peersField]).forEach((p, j) => problems.push(...peerProblems(p, `spec.${direction}[${i}].${peersField}[${j}]`)));
    });
  }
  return problems;
}

function compilePeer(raw: unknown): PolicyPeer {
  const peer = record(raw);
  const ipBlock = record(peer['ipBlock']);
  if (typeof ipBlock['cidr'] === 'string') {
    const except = asArray(ipBlock['except']).map((e) => parseCidr(String(e))!);
    const text = `ipBlock ${ipBlock['cidr']}${except.length ? ` except ${except.map((e) => e.text).join(', ')}` : ''}`;
    return { kind: 'ipBlock', cidr: parseCidr(ipBlock['cidr'])!, except, text };
  }
  const podSelector = compileSelector(peer['podSelector'] as never);
  const namespaceSelector = peer['namespaceSelector'] != null ? compileSelector(peer['namespaceSelector'] as never) : undefined;
  const text = `${namespaceSelector ? `namespaces {${namespaceSelector.text}}` : 'own namespace'}, pods {${podSelector.text}}`;
  return { kind: 'pods', podSelector, namespaceSelector, text, namespaceCache: new Map() };
}

function compilePort(raw: unknown): PolicyPort {
  const p = record(raw);
  const protocol = PROTOCOLS[String(p['protocol'] ?? 'TCP')]!;
  const port = typeof p['port'] === 'number' || typeof p['port'] === 'string' ? p['port'] : undefined;
  return { protocol, port, endPort: typeof p['endPort'] === 'number' ? p['endPort'] : undefined };
}

/** Compiles a policy that `networkPolicyProblems` accepted. */
export function compilePolicy(obj: KubeObject): CompiledPolicy {
  const spec = record(obj.spec);
  const ingressRules = asArray(spec['ingress']);
  const egressRules = asArray(spec['egress']);
  const declared = spec['policyTypes'] as string[] | undefined | null;
  // Kubernetes defaulting: Ingress always, Egress when the policy has egress rules.
  const types = declared?.length
    ? { ingress: declared.includes('Ingress'), egress: declared.includes('Egress') }
    : { ingress: true, egress: egressRules.length > 0 };
  const compileRules = (rules: unknown[], peersField: 'from' | 'to'): PolicyRule[] =>
    rules.map((raw) => {
      const rule = record(raw);
      const peers = asArray(rule[peersField]);
      const ports = asArray(rule['ports']);
      return { peers: peers.length ? peers.map(compilePeer) : undefined, ports: ports.length ? ports.map(compilePort) : undefined };
    });
  const name = obj.metadata!.name!;
  const namespace = obj.metadata?.namespace || 'default';
  return {
    name,
    namespace,
    ref: { name, namespace },
    podSelector: compileSelector(spec['podSelector'] as never),
    types,
    ingress: types.ingress ? compileRules(ingressRules, 'from') : [],
    egress: types.egress ? compileRules(egressRules, 'to') : [],
    loggingEnabled: obj.metadata?.annotations?.[ENABLE_LOGGING_ANNOTATION] === 'true',
  };
}

// ---- Pods, namespaces, nodes ----

function workloadOf(obj: KubeObject, controllers: KubeObject[]): { name: string; kind: string } | undefined {
  const owners = obj.metadata?.ownerReferences ?? [];
  const owner = owners.find((o) => o.controller) ?? owners[0];
  if (owner?.name && owner.kind) return { name: owner.name, kind: owner.kind };
  // A pod written without ownerReferences still belongs to a workload whose selector picks it: a Deployment's pods
  // belong to the ReplicaSet `<deployment>-<pod-template-hash>`, as GKE reports them.
  const labels = stringMap(obj.metadata?.labels);
  for (const c of controllers) {
    if ((c.metadata?.namespace || 'default') !== (obj.metadata?.namespace || 'default')) continue;
    const selector = record(c.spec)['selector'];
    if (selector == null || selectorProblems(selector, '').length || !compileSelector(selector as never).matches(labels)) continue;
    if (compileSelector(selector as never).matchesAll) continue;
    const name = c.metadata?.name ?? '';
    if (c.kind === 'Deployment') {
      const hash = labels['pod-template-hash'];
      return hash ? { name: `${name}-${hash}`, kind: 'ReplicaSet' } : { name, kind: 'Deployment' };
    }
    return { name, kind: c.kind! };
  }
  return undefined;
}

function protocolOf(value: unknown): Protocol {
  return PROTOCOLS[String(value ?? 'TCP')] ?? 'tcp';
}

/** The Pod as evaluation sees it, or a reason it cannot take part (no IP, host network). */
export function podFrom(obj: KubeObject, controllers: KubeObject[]): Pod | string {
  const status = record(obj.status);
  const spec = record(obj.spec);
  const name = obj.metadata?.name ?? '';
  const namespace = obj.metadata?.namespace || 'default';
  if (spec['hostNetwork'] === true) return 'uses the host network, so its traffic is its node\'s';
  const phase = status['phase'];
  if (phase === 'Succeeded' || phase === 'Failed') return `has finished (phase ${phase})`;
  const ipTexts = new Set<string>();
  if (typeof status['podIP'] === 'string') ipTexts.add(status['podIP']);
  for (const entry of asArray(status['podIPs'])) if (typeof record(entry)['ip'] === 'string') ipTexts.add(record(entry)['ip'] as string);
  const ips = [...ipTexts].map(normalizeIp).filter((ip): ip is string => ip !== undefined);
  if (ips.length === 0) return 'has no IP (status.podIP)';
  const ports: ContainerPort[] = [];
  for (const container of [...asArray(spec['containers']), ...asArray(spec['initContainers'])])
    for (const rawPort of asArray(record(container)['ports'])) {
      const p = record(rawPort);
      if (typeof p['containerPort'] !== 'number') continue;
      ports.push({ port: p['containerPort'], protocol: protocolOf(p['protocol']), ...(typeof p['name'] === 'string' ? { name: p['name'] } : {}) });
    }
  const workload = workloadOf(obj, controllers);
  const endpoint = {
    pod_name: name,
    pod_namespace: namespace,
    namespace,
    ...(workload ? { workload_name: workload.name, workload_kind: workload.kind } : {}),
  };
  return { name, namespace, labels: stringMap(obj.metadata?.labels), nodeName: typeof spec['nodeName'] === 'string' ? spec['nodeName'] : '', ips, ports, workload, endpoint, identity: 0 };
}

export function nodeFrom(obj: KubeObject): Node {
  const ips: string[] = [];
  for (const a of asArray(record(obj.status)['addresses'])) {
    const { type, address } = record(a);
    const ip = typeof address === 'string' && (type === 'InternalIP' || type === 'ExternalIP') ? normalizeIp(address) : undefined;
    if (ip) ips.push(ip);
  }
  const spec = record(obj.spec);
  const podCidrs = new Set([...(typeof spec['podCIDR'] === 'string' ? [spec['podCIDR']] : []), ...asArray(spec['podCIDRs']).filter((c) => typeof c === 'string')]);
  for (const text of podCidrs) {
    const cidr = parseCidr(text as string);
    const gateway = cidr && firstHostOf(cidr);
    if (gateway) ips.push(gateway);
  }
  return { name: obj.metadata?.name ?? '', ips };
}

export function namespaceFrom(obj: KubeObject): Namespace {
  const name = obj.metadata?.name ?? '';
  // The API server sets this label on every namespace; manifests written by hand often lack it.
  const labels = { ...stringMap(obj.metadata?.labels), [NAMESPACE_NAME_LABEL]: name };
  return { name, labels: Object.assign(Object.create(null), labels), annotations: stringMap(obj.metadata?.annotations) };
}

export class Cluster {
  readonly namespaces = new Map<string, Namespace>();
  readonly nodes = new Map<string, Node>();
  readonly podsByIp = new Map<string, Pod>();
  readonly nodesByIp = new Map<string, Node>();
  /** Pods and nodes by IP, as evaluation resolves them (a pod's IP wins over a node's). */
  readonly endpointsByIp = new Map<string, Endpoint>();
  /** The IPv4 part of `endpointsByIp`, for the hot path. */
  readonly endpointsByIpv4: Ipv4Table<Endpoint>;
  readonly pods: Pod[] = [];
  readonly policies: CompiledPolicy[] = [];
  private readonly policiesByNamespace = new Map<string, CompiledPolicy[]>();
  /**
   * Directional verdicts by (enforced identity, direction) → (remote identity or IPv4, port, protocol) → allowing
   * policies (empty: denied). Valid for this Cluster only; a reload starts empty. Bounded by `MAX_CACHED_VERDICTS`.
   */
  readonly verdictCache = new Map<number, Map<number, DirectionVerdict>>();
  cachedVerdicts = 0;

  constructor(
    parts: { namespaces: Namespace[]; nodes: Node[]; pods: Pod[]; policies: CompiledPolicy[] },
    readonly logging: LoggingSetting = DEFAULT_LOGGING,
  ) {
    for (const ns of parts.namespaces) this.namespaces.set(ns.name, ns);
    for (const node of parts.nodes) {
      this.nodes.set(node.name, node);
      for (const ip of node.ips) this.nodesByIp.set(ip, node);
    }
    const identities = new Map<string, number>();
    for (const pod of parts.pods) {
      const labels = Object.keys(pod.labels).sort().map((k) => `${k}=${pod.labels[k]}`).join('\n');
      const named = pod.ports.filter((p) => p.name).map((p) => `${p.name}/${p.protocol}/${p.port}`).sort().join(',');
      const key = `${pod.namespace}\n${labels}\n${named}`;
      let identity = identities.get(key);
      if (identity === undefined) identities.set(key, (identity = identities.size + 1));
      pod.identity = identity;
      if (!this.namespaces.has(pod.namespace)) this.namespaces.set(pod.namespace, namespaceFrom({ metadata: { name: pod.namespace } }));
      this.pods.push(pod);
      for (const ip of pod.ips) this.podsByIp.set(ip, pod);
    }
    for (const [ip, node] of this.nodesByIp) this.endpointsByIp.set(ip, { kind: 'node', ip, node });
    for (const [ip, pod] of this.podsByIp) this.endpointsByIp.set(ip, { kind: 'pod', ip, pod });
    this.endpointsByIpv4 = new Ipv4Table(this.endpointsByIp.size);
    for (const [ip, endpoint] of this.endpointsByIp) if (ipv4ToInt(ip) >= 0) this.endpointsByIpv4.set(ipv4ToInt(ip), endpoint);
    for (const policy of parts.policies) {
      this.policies.push(policy);
      const list = this.policiesByNamespace.get(policy.namespace) ?? [];
      list.push(policy);
      this.policiesByNamespace.set(policy.namespace, list);
    }
  }

  /** The policies whose podSelector selects `pod` and that cover `direction` (cached on the pod). */
  policiesFor(pod: Pod, direction: Direction): CompiledPolicy[] {
    if (!pod.selectedBy) {
      const ingress: CompiledPolicy[] = [];
      const egress: CompiledPolicy[] = [];
      for (const policy of this.policiesByNamespace.get(pod.namespace) ?? []) {
        if (!policy.podSelector.matches(pod.labels)) continue;
        if (policy.types.ingress) ingress.push(policy);
        if (policy.types.egress) egress.push(policy);
      }
      pod.selectedBy = { ingress, egress };
    }
    return pod.selectedBy[direction];
  }

  policyNamed(namespace: string, name: string): CompiledPolicy | undefined {
    return this.policiesByNamespace.get(namespace)?.find((p) => p.name === name);
  }

  namespaceLabels(name: string): Labels {
    return this.namespaces.get(name)?.labels ?? { [NAMESPACE_NAME_LABEL]: name };
  }
}

