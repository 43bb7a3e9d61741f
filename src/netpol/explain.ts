import type { PolicyActionRecord } from '../model/index.ts';
import { NetpolError } from './errors.ts';
import { type Connection, describeEndpoint, enforcedPodOf, evaluate } from './evaluate.ts';
import { normalizeIp } from './ip.ts';
import type { Cluster, Direction, Protocol } from './model.ts';
import { PolicyActionRecorder } from './recorder.ts';
import { DEFAULT_SETTINGS } from './settings.ts';

/**
 * `custos netpol explain SRC DEST:PORT/PROTO`: which policies select each side, which rule allowed the connection, or
 * why none did, and the records a node would write for it.
 */
export interface DirectionExplanation {
  direction: Direction;
  enforcedAt: string;
  /** False for ingress after an egress deny: the connection never got there. */
  reached: boolean;
  isolated: boolean;
  allowed: boolean;
  allowedBy: string[];
  reasons: string[];
}

export interface Explanation {
  connection: string;
  allowed: boolean;
  /** Set when no direction was evaluated (self traffic, or neither end a pod). */
  note?: string;
  directions: DirectionExplanation[];
  records: PolicyActionRecord[];
}

const PROTOCOLS = new Set(['tcp', 'udp', 'sctp', 'icmp']);

function endpointIp(cluster: Cluster, text: string): string {
  const ip = normalizeIp(text.replace(/^\[|\]$/g, ''));
  if (ip) return ip;
  const [namespace, name] = text.includes('/') ? text.split('/', 2) : ['default', text];
  const pod = cluster.pods.find((p) => p.namespace === namespace && p.name === name);
  if (!pod) throw new NetpolError('BAD_ENDPOINT', `"${text}" is neither an IP address nor a pod (namespace/name) in the manifests`);
  return pod.ips[0]!;
}

/** `SRC` and `DEST:PORT/PROTO` (PORT may be a container port name of the destination pod; `DEST/icmp` has none). */
export function parseExplainArgs(cluster: Cluster, src: string, dest: string): Connection {
  let rest = dest;
  let protoText: string | undefined;
  const slash = rest.lastIndexOf('/');
  if (slash >= 0 && PROTOCOLS.has(rest.slice(slash + 1).toLowerCase())) [rest, protoText] = [rest.slice(0, slash), rest.slice(slash + 1)];
  let host = rest;
  let portText: string | undefined;
  const bracketed = /^\[([^\]]+)\](?::([^:]+))?$/.exec(rest);
  if (bracketed) [host, portText] = [bracketed[1]!, bracketed[2]];
  else if (rest.split(':').length === 2) [host, portText] = rest.split(':') as [string, string];
  const protocol = (protoText ?? 'tcp').toLowerCase() as Protocol;
  const srcIp = endpointIp(cluster, src);
  const destIp = endpointIp(cluster, host);
  if (protocol === 'icmp') return { srcIp, destIp, protocol };
  if (portText === undefined) throw new NetpolError('BAD_ENDPOINT', `"${dest}": give the destination port, as DEST:PORT/PROTO`);
  let destPort = Number(portText);
  if (!/^\d+$/.test(portText)) {
    const pod = cluster.podsByIp.get(destIp);
    const named = pod?.ports.find((p) => p.name === portText && p.protocol === protocol);
    if (!named) throw new NetpolError('BAD_ENDPOINT', `port name "${portText}" is not a ${protocol} container port of ${host}`);
    destPort = named.port;
  }
  if (!Number.isInteger(destPort) || destPort < 1 || destPort > 65535) throw new NetpolError('BAD_ENDPOINT', `port ${portText} is out of range`);
  return { srcIp, destIp, srcPort: 0, destPort, protocol };
}

export function explainConnection(cluster: Cluster, conn: Connection, at = new Date()): Explanation {
  const verdict = evaluate(cluster, conn, true);
  const port = conn.protocol === 'icmp' ? 'icmp' : `port ${conn.destPort}/${conn.protocol}`;
  const directions: DirectionExplanation[] = [];
  for (const d of [verdict.egress, verdict.ingress]) {
    if (!d) continue;
    const pod = enforcedPodOf(verdict, d.direction);
    directions.push({
      direction: d.direction,
      enforcedAt: `${pod.namespace}/${pod.name} on node ${pod.nodeName || '(unscheduled)'}`,
      reached: true,
      isolated: d.isolated,
      allowed: d.allowed,
      allowedBy: d.allowing.map((p) => `${p.namespace}/${p.name}`),
      reasons: d.reasons ?? [],
    });
  }
  if (verdict.egress && !verdict.egress.allowed && verdict.dest.kind === 'pod')
    directions.push({ direction: 'ingress', enforcedAt: `${verdict.dest.pod.namespace}/${verdict.dest.pod.name} on node ${verdict.dest.pod.nodeName || '(unscheduled)'}`, reached: false, isolated: false, allowed: false, allowedBy: [], reasons: ['not reached: the connection was denied on egress'] });
  const records: PolicyActionRecord[] = [];
  const recorder = new PolicyActionRecorder(cluster, { settings: { ...DEFAULT_SETTINGS, rateLimitPerSecond: 0 }, emit: (r) => records.push(r) });
  const t = at.getTime() / 1000;
  recorder.onFlow({ line: 0, timestamp: at.toISOString(), t, conn });
  recorder.finish();
  let note: string | undefined;
  if (verdict.selfTraffic) note = 'a pod talking to itself is never blocked and writes no record';
  else if (directions.length === 0) note = 'neither end is a pod, so no NetworkPolicy applies';
  return { connection: `${describeEndpoint(verdict.src)} → ${describeEndpoint(verdict.dest)} ${port}`, allowed: verdict.allowed, ...(note ? { note } : {}), directions, records };
}

export function renderExplanation(e: Explanation): string {
  const lines = [`connection: ${e.connection}`];
  if (e.note) lines.push(`  ${e.note}`);
  for (const d of e.directions) {
    lines.push(`${d.direction} (enforced at ${d.enforcedAt}): ${!d.reached ? 'NOT REACHED' : d.allowed ? 'ALLOWED' : 'DENIED'}${d.allowedBy.length ? ` by ${d.allowedBy.join(', ')}` : ''}`);
    for (const r of d.reasons) lines.push(`  - ${r}`);
  }
  lines.push(`verdict: ${e.allowed ? 'ALLOWED' : 'DENIED'}`);
  lines.push(e.records.length ? 'records a node would write (NetworkLogging applied):' : 'records: none (no isolated direction, or NetworkLogging does not log it)');
  for (const r of e.records) lines.push(`  ${JSON.stringify(r)}`);
  return lines.join('\n') + '\n';
}
