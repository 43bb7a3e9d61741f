import type { PolicyActionEndpoint, PolicyActionRecord } from '../model/index.ts';
import { DatagramTracker, DenyAggregator } from './aggregate.ts';
import { type Connection, type DirectionVerdict, type Endpoint, enforcedPodOf, evaluate, type Verdict } from './evaluate.ts';
import type { ObservedFlow, TupleFlow } from './flows.ts';
import { allowedPoliciesToLog, denyIsLogged } from './logging.ts';
import { policyLoggingMetrics as metrics } from './metrics.ts';
import { type Cluster, type Direction, ENABLE_DENY_LOGGING_ANNOTATION, PROTOCOL_CODES } from './model.ts';
import { NodeRateLimiter } from './ratelimit.ts';
import type { NetpolSettings } from './settings.ts';

/**
 * Turns verdicts into policy-action records the way a Dataplane V2 node does (seed 002): one record per direction in
 * which the enforced pod is isolated, filtered by NetworkLogging, denies aggregated, every record paying a token of
 * its node's rate limit. Time is the flows' own clock.
 */
export interface RecorderOptions {
  settings: NetpolSettings;
  /** Only verdicts enforced on this node are logged (a node logs for its own pods). */
  node?: string;
  emit(record: PolicyActionRecord): void;
}

/** One direction's decision, whichever source reached it. */
interface Decision {
  direction: Direction;
  allowed: boolean;
  /** Allowing policies; `own-node` for node-to-pod traffic allowed regardless of policy. */
  policies: { ref: { name: string; namespace: string }; loggingEnabled: boolean }[] | 'own-node';
  nodeName: string;
  /** Namespace of the enforced pod, for delegated deny logging. */
  namespace: string;
  conn: Connection;
  timestamp: string;
  t: number;
  src: PolicyActionEndpoint;
  dest: PolicyActionEndpoint;
}

const PROBE_POLICIES = [{ name: '' }];

// Verdicts are cached, so the same allowing list recurs: its `policies` array (and that array's JSON) is built once.
const policyRefs = new WeakMap<object, { name: string; namespace: string }[]>();

function refsOf(policies: { ref: { name: string; namespace: string } }[]): { name: string; namespace: string }[] {
  let refs = policyRefs.get(policies);
  if (!refs) {
    refs = policies.map((p) => p.ref);
    policyRefs.set(policies, refs);
  }
  return refs;
}

export function endpointOf(e: Endpoint): PolicyActionEndpoint {
  return e.kind === 'pod' ? e.pod.endpoint : { instance: e.ip };
}

function connectionOf(conn: Connection, direction: Direction): PolicyActionRecord['connection'] {
  return conn.protocol === 'icmp'
    ? { src_ip: conn.srcIp, dest_ip: conn.destIp, protocol: conn.protocol, direction }
    : { src_ip: conn.srcIp, dest_ip: conn.destIp, src_port: conn.srcPort, dest_port: conn.destPort, protocol: conn.protocol, direction };
}

export class PolicyActionRecorder {
  private readonly denies: DenyAggregator<PolicyActionRecord>;
  private readonly datagrams: DatagramTracker;
  private readonly limiter: NodeRateLimiter;
  private clock = -Infinity;

  constructor(
    private cluster: Cluster,
    private readonly options: RecorderOptions,
  ) {
    const s = options.settings;
    this.denies = new DenyAggregator(s.denyAggregationWindowSeconds, s.denyAggregationMaxKeys, (window) =>
      this.emitDeny(window.record, window.count, window.opened + s.denyAggregationWindowSeconds),
    );
    this.datagrams = new DatagramTracker(s.connectionTimeoutSeconds);
    this.limiter = new NodeRateLimiter(s.rateLimitPerSecond);
  }

  /** A reloaded cluster applies to every connection after this call. */
  setCluster(cluster: Cluster): void {
    this.cluster = cluster;
  }

  /** Evaluates a connection attempt and records it; undefined when it continues a UDP/ICMP connection already seen. */
  onFlow(flow: TupleFlow): Verdict | undefined {
    this.advance(flow.t);
    if (!this.startsConnection(flow.conn, flow.t, '')) return undefined;
    const verdict = evaluate(this.cluster, flow.conn);
    if (verdict.egress?.isolated) this.decide(this.fromVerdict(verdict.egress, verdict, flow));
    if (verdict.ingress?.isolated) this.decide(this.fromVerdict(verdict.ingress, verdict, flow));
    return verdict;
  }

  /** Records a verdict Cilium reached (Hubble); endpoints known from the manifests are described from them. */
  onObserved(flow: ObservedFlow): void {
    this.advance(flow.t);
    if (!this.startsConnection(flow.conn, flow.t, flow.direction)) return;
    const src = this.cluster.podsByIp.get(flow.conn.srcIp);
    const dest = this.cluster.podsByIp.get(flow.conn.destIp);
    const enforced = flow.direction === 'egress' ? src : dest;
    const enforcedEndpoint = flow.direction === 'egress' ? flow.src : flow.dest;
    let policies: Decision['policies'];
    if (flow.allowedBy.length) {
      policies = flow.allowedBy.map((p) => {
        const namespace = p.namespace ?? '';
        const known = this.cluster.policyNamed(namespace, p.name);
        return { ref: { name: p.name, namespace }, loggingEnabled: known?.loggingEnabled ?? false };
      });
    } else if (flow.allowed) {
      // Allowed without a policy: logged only for a pod the manifests show isolated (host traffic, probes).
      if (!enforced || this.cluster.policiesFor(enforced, flow.direction).length === 0) return;
      policies = 'own-node';
    } else policies = [];
    const namespace = enforced?.namespace ?? enforcedEndpoint?.namespace ?? '';
    this.decide({
      direction: flow.direction,
      allowed: flow.allowed,
      policies,
      nodeName: flow.nodeName ?? enforced?.nodeName ?? '',
      namespace,
      conn: flow.conn,
      timestamp: flow.timestamp,
      t: flow.t,
      src: src?.endpoint ?? flow.src ?? { instance: flow.conn.srcIp },
      dest: dest?.endpoint ?? flow.dest ?? { instance: flow.conn.destIp },
    });
  }

  /** Closes the deny windows that ended by flow time `t`. */
  advance(t: number): void {
    if (t > this.clock) this.clock = t;
    this.denies.close(this.clock);
  }

  /** End of input: every open deny window is written. */
  finish(): void {
    this.denies.close(Infinity);
  }

  private startsConnection(conn: Connection, t: number, direction: string): boolean {
    if (conn.protocol !== 'udp' && conn.protocol !== 'icmp') return true;
    return this.datagrams.isNewConnection(`${direction}|${conn.protocol}|${conn.srcIp}|${conn.srcPort}|${conn.destIp}|${conn.destPort}`, t);
  }

  // One Decision reused for every direction of every tuple flow: `decide` keeps none of it, and the hot path
  // allocates less.
  private readonly scratch: Decision = { direction: 'ingress', allowed: true, policies: [], nodeName: '', namespace: '', conn: { srcIp: '', destIp: '', protocol: 'tcp' }, timestamp: '', t: 0, src: {}, dest: {} };

  private fromVerdict(d: DirectionVerdict, verdict: Verdict, flow: TupleFlow): Decision {
    const s = this.scratch;
    s.direction = d.direction;
    s.allowed = d.allowed;
    s.policies = d.fromOwnNode ? 'own-node' : d.allowing;
    const pod = enforcedPodOf(verdict, d.direction);
    s.nodeName = pod.nodeName;
    s.namespace = pod.namespace;
    s.conn = flow.conn;
    s.timestamp = flow.timestamp;
    s.t = flow.t;
    s.src = endpointOf(verdict.src);
    s.dest = endpointOf(verdict.dest);
    return s;
  }

  private decide(d: Decision): void {
    if (this.options.node !== undefined && d.nodeName !== this.options.node) return;
    const logging = this.cluster.logging;
    metrics.event(d.allowed ? 'allow' : 'deny');
    if (d.allowed) {
      let policies: PolicyActionRecord['policies'];
      if (d.policies === 'own-node') {
        if (!logging.allow.log || logging.allow.delegate) return;
        policies = PROBE_POLICIES;
      } else {
        const kept = allowedPoliciesToLog(logging, d.policies);
        if (!kept) return;
        policies = refsOf(kept);
      }
      if (!this.limiter.take(d.nodeName, d.t)) {
        metrics.dropped(d.direction, 'rate_limit');
        return;
      }
      metrics.logged(d.direction, 'allow');
      this.options.emit({ connection: connectionOf(d.conn, d.direction), disposition: 'allow', policies, src: d.src, dest: d.dest, count: 1, node_name: d.nodeName, timestamp: d.timestamp });
      return;
    }
    // The namespace annotation is looked up only when delegation makes it matter.
    const namespaceDenyLogging = logging.deny.delegate && this.cluster.namespaces.get(d.namespace)?.annotations[ENABLE_DENY_LOGGING_ANNOTATION] === 'true';
    if (!denyIsLogged(logging, namespaceDenyLogging)) return;
    // (src_ip, dest_ip, dest_port, protocol, direction): the enforced side's address and the direction as the group,
    // the other address, port and protocol as the key; plain numbers for IPv4 (33 and 51 bits).
    const c = d.conn;
    const v4 = c.srcIpv4 !== undefined && c.srcIpv4 >= 0 && c.destIpv4 !== undefined && c.destIpv4 >= 0;
    const ingress = d.direction === 'ingress';
    const group = v4 ? (ingress ? c.destIpv4! * 2 + 1 : c.srcIpv4! * 2) : `${c.srcIp}|${c.destIp}|${d.direction}`;
    const key = v4 ? (ingress ? c.srcIpv4! : c.destIpv4!) * 524_288 + (c.destPort ?? 0) * 8 + PROTOCOL_CODES[c.protocol] : `${c.destPort}|${c.protocol}`;
    const outcome = this.denies.merge(group, key, d.t);
    if (outcome === 'new') this.denies.open(group, key, d.t, { connection: connectionOf(d.conn, d.direction), disposition: 'deny', src: d.src, dest: d.dest, count: 1, node_name: d.nodeName, timestamp: d.timestamp });
    else if (outcome === 'overflow') metrics.dropped(d.direction, 'aggregation_limit');
  }

  private emitDeny(record: PolicyActionRecord, count: number, closedAt: number): void {
    record.count = count;
    if (!this.limiter.take(record.node_name, closedAt)) {
      metrics.dropped(record.connection.direction, 'rate_limit');
      return;
    }
    metrics.logged(record.connection.direction, 'deny');
    this.options.emit(record);
  }
}

// ---- Serialization: the record as one NDJSON line, in the seed's key order ----

const fragments = new WeakMap<object, string>();

/** JSON of an object shared by many records (a pod's endpoint, a policy reference), computed once. */
function sharedJson(value: object): string {
  let text = fragments.get(value);
  if (text === undefined) {
    text = JSON.stringify(value);
    fragments.set(value, text);
  }
  return text;
}

function endpointJson(e: PolicyActionEndpoint): string {
  // A non-pod endpoint is made per record; its one field is a validated IP address, which needs no escaping.
  return e.pod_name === undefined && e.instance !== undefined ? `{"instance":"${e.instance}"}` : sharedJson(e);
}

/**
 * `JSON.stringify(record)`, faster: endpoints and policy references are shared objects whose JSON is cached, and the
 * IPs, ports, protocol and timestamp were validated when the flow was parsed.
 */
export function serializeRecord(r: PolicyActionRecord): string {
  const c = r.connection;
  let line = '{"connection":{"src_ip":"' + c.src_ip + '","dest_ip":"' + c.dest_ip + '",';
  if (c.src_port !== undefined) line += '"src_port":' + c.src_port + ',"dest_port":' + c.dest_port + ',';
  line += '"protocol":"' + c.protocol + '","direction":"' + c.direction + '"},"disposition":"' + r.disposition + '",';
  if (r.policies) line += '"policies":' + sharedJson(r.policies) + ',';
  return line + '"src":' + endpointJson(r.src) + ',"dest":' + endpointJson(r.dest) + ',"count":' + r.count + ',"node_name":' + nodeNameJson(r.node_name) + ',"timestamp":"' + r.timestamp + '"}';
}

// A cluster has few nodes: their names' JSON is kept (bounded, in case names come from untrusted flows).
const nodeNames = new Map<string, string>();

function nodeNameJson(name: string): string {
  let text = nodeNames.get(name);
  if (text === undefined) {
    if (nodeNames.size >= 10_000) nodeNames.clear();
    text = JSON.stringify(name);
    nodeNames.set(name, text);
  }
  return text;
}
