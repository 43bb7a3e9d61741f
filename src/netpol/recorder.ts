import type { PolicyActionEndpoint, PolicyActionRecord } from '../model/index.ts';
import { DatagramTracker, DenyAggregator } from './aggregate.ts';
import { type Connection, type DirectionVerdict, type Endpoint, evaluate, type Verdict } from './evaluate.ts';
import type { ObservedFlow, TupleFlow } from './flows.ts';
import { allowedPoliciesToLog, denyIsLogged } from './logging.ts';
import { policyLoggingMetrics as metrics } from './metrics.ts';
import { type Cluster, type Direction, ENABLE_DENY_LOGGING_ANNOTATION } from './model.ts';
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
  policies: { name: string; namespace: string; loggingEnabled: boolean }[] | 'own-node';
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
    this.denies = new DenyAggregator(s.denyAggregationWindowSeconds, s.denyAggregationMaxKeys);
    this.datagrams = new DatagramTracker(s.connectionTimeoutSeconds);
    this.limiter = new NodeRateLimiter(s.rateLimitPerSecond);
  }

  /** A reloaded cluster applies to every connection after this call. */
  setCluster(cluster: Cluster): void {
    this.cluster = cluster;
  }

  get currentCluster(): Cluster {
    return this.cluster;
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
        const known = this.cluster.policies.find((c) => c.name === p.name && c.namespace === namespace);
        return { name: p.name, namespace, loggingEnabled: known?.loggingEnabled ?? false };
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
    for (const window of this.denies.close(this.clock)) this.emitDeny(window.record, window.count, window.opened + this.options.settings.denyAggregationWindowSeconds);
  }

  /** End of input: every open deny window is written. */
  finish(): void {
    for (const window of this.denies.close(Infinity)) this.emitDeny(window.record, window.count, window.opened + this.options.settings.denyAggregationWindowSeconds);
  }

  private startsConnection(conn: Connection, t: number, direction: string): boolean {
    if (conn.protocol !== 'udp' && conn.protocol !== 'icmp') return true;
    return this.datagrams.isNewConnection(`${direction}|${conn.protocol}|${conn.srcIp}|${conn.srcPort}|${conn.destIp}|${conn.destPort}`, t);
  }

  private fromVerdict(d: DirectionVerdict, verdict: Verdict, flow: TupleFlow): Decision {
    return {
      direction: d.direction,
      allowed: d.allowed,
      policies: d.fromOwnNode ? 'own-node' : d.allowing,
      nodeName: d.enforcedPod.nodeName,
      namespace: d.enforcedPod.namespace,
      conn: flow.conn,
      timestamp: flow.timestamp,
      t: flow.t,
      src: endpointOf(verdict.src),
      dest: endpointOf(verdict.dest),
    };
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
        policies = kept.map((p) => ({ name: p.name, namespace: p.namespace }));
      }
      if (!this.limiter.take(d.nodeName, d.t)) {
        metrics.dropped(d.direction, 'rate_limit');
        return;
      }
      metrics.logged(d.direction, 'allow');
      this.options.emit({ connection: connectionOf(d.conn, d.direction), disposition: 'allow', policies, src: d.src, dest: d.dest, count: 1, node_name: d.nodeName, timestamp: d.timestamp });
      return;
    }
    const namespaceDenyLogging = this.cluster.namespaces.get(d.namespace)?.annotations[ENABLE_DENY_LOGGING_ANNOTATION] === 'true';
    if (!denyIsLogged(logging, namespaceDenyLogging)) return;
    const key = `${d.conn.srcIp}|${d.conn.destIp}|${d.conn.destPort}|${d.conn.protocol}|${d.direction}`;
    const outcome = this.denies.add(key, d.t, () => ({ connection: connectionOf(d.conn, d.direction), disposition: 'deny', src: d.src, dest: d.dest, count: 1, node_name: d.nodeName, timestamp: d.timestamp }));
    if (outcome === 'overflow') metrics.dropped(d.direction, 'aggregation_limit');
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
