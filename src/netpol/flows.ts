import type { Readable } from 'node:stream';
import type { PolicyActionEndpoint } from '../model/index.ts';
import { formatTimestamp, parseTimestamp } from '../model/index.ts';
import { NetpolError } from './errors.ts';
import type { Connection } from './evaluate.ts';
import { ipv4ToInt, normalizeIp } from './ip.ts';
import type { Direction, Protocol } from './model.ts';

/**
 * Flow sources. `tuple`: one connection attempt a line, `{"time","src_ip","src_port","dest_ip","dest_port","protocol"}`.
 * `hubble`: the JSON lines `hubble observe -o json` prints, where Cilium already enforced the policy, so the verdict
 * and the allowing policies come from the flow itself.
 */
export interface FlowTime {
  /** The record's timestamp: the flow's own instant, in UTC. */
  timestamp: string;
  /** Seconds since the epoch (fractional), the clock of aggregation and rate limiting. */
  t: number;
}

export interface TupleFlow extends FlowTime {
  line: number;
  conn: Connection;
}

/** A verdict Cilium already reached for one direction (Hubble's policy verdict). */
export interface ObservedFlow extends FlowTime {
  line: number;
  conn: Connection;
  direction: Direction;
  allowed: boolean;
  /** Hubble's `egress_allowed_by` / `ingress_allowed_by`. */
  allowedBy: { name: string; namespace?: string }[];
  nodeName?: string;
  src?: PolicyActionEndpoint;
  dest?: PolicyActionEndpoint;
}

export type FlowFormat = 'tuple' | 'hubble';

const PROTOCOL_NAMES: Record<string, Protocol> = { tcp: 'tcp', udp: 'udp', sctp: 'sctp', icmp: 'icmp', icmpv6: 'icmp', TCP: 'tcp', UDP: 'udp', SCTP: 'sctp', ICMP: 'icmp' };

function fail(line: number, message: string): never {
  throw new NetpolError('FLOW_PARSE', `line ${line}: ${message}`);
}

// Flows arrive in time order, so consecutive timestamps share their minute: `YYYY-MM-DDTHH:MM` is parsed once.
let cachedMinute = '';
let cachedMinuteEpoch = 0;

function digit(text: string, i: number): number {
  const c = text.charCodeAt(i) - 48;
  return c >= 0 && c <= 9 ? c : NaN;
}

/** `YYYY-MM-DDTHH:MM:SS[.fraction]Z` within the cached minute, else undefined (the full parser decides). */
function sameMinuteSeconds(text: string): number | undefined {
  const end = text.length - 1;
  if (cachedMinute === '' || end < 19 || text.charCodeAt(end) !== 90 || !text.startsWith(cachedMinute) || text.charCodeAt(16) !== 58) return undefined;
  const second = digit(text, 17) * 10 + digit(text, 18);
  if (!(second < 60)) return undefined;
  if (end === 19) return cachedMinuteEpoch + second;
  if (text.charCodeAt(19) !== 46 || end - 20 > 9 || end === 20) return undefined;
  let fraction = 0;
  let scale = 1;
  for (let i = 20; i < end; i++) {
    const d = digit(text, i);
    if (Number.isNaN(d)) return undefined;
    fraction = fraction * 10 + d;
    scale *= 10;
  }
  return cachedMinuteEpoch + second + fraction / scale;
}

export function flowTime(value: unknown, line: number, field = 'time'): FlowTime {
  if (typeof value !== 'string') fail(line, `${field}: required RFC 3339 timestamp`);
  const fast = sameMinuteSeconds(value);
  if (fast !== undefined) return { timestamp: value, t: fast };
  const parsed = parseTimestamp(value);
  if (!parsed) fail(line, `${field}: ${JSON.stringify(value.slice(0, 64))} is not an RFC 3339 timestamp`);
  const t = parsed.epochSeconds + parsed.nanos / 1e9;
  if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/.test(value)) {
    cachedMinute = value.slice(0, 16);
    cachedMinuteEpoch = Math.floor(parsed.epochSeconds / 60) * 60;
    return { timestamp: value, t };
  }
  return { timestamp: formatTimestamp(parsed), t };
}

function ipv4(value: unknown): number {
  return typeof value === 'string' ? ipv4ToInt(value) : -1;
}

function ip(value: unknown, line: number, field: string): string {
  const normalized = typeof value === 'string' ? normalizeIp(value) : undefined;
  if (!normalized) fail(line, `${field}: ${JSON.stringify(value ?? null)} is not an IP address`);
  return normalized;
}

function port(value: unknown, line: number, field: string, required: boolean): number | undefined {
  if (value === undefined || value === null) {
    if (required) fail(line, `${field}: required for this protocol`);
    return undefined;
  }
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 65535) fail(line, `${field}: ${JSON.stringify(value)} is not a port (0-65535)`);
  return value;
}

function parseJsonLine(text: string, line: number): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    fail(line, `not JSON (${(err as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(line, 'not a JSON object');
  return value as Record<string, unknown>;
}

export function parseTupleFlow(text: string, line: number): TupleFlow {
  const f = parseJsonLine(text, line);
  const protocol = PROTOCOL_NAMES[f['protocol'] as string];
  if (!protocol) fail(line, `protocol: ${JSON.stringify(f['protocol'] ?? null)} is not one of tcp, udp, sctp, icmp`);
  const time = flowTime(f['time'], line);
  const srcIpv4 = ipv4(f['src_ip']);
  const destIpv4 = ipv4(f['dest_ip']);
  const srcIp = srcIpv4 >= 0 ? (f['src_ip'] as string) : ip(f['src_ip'], line, 'src_ip');
  const destIp = destIpv4 >= 0 ? (f['dest_ip'] as string) : ip(f['dest_ip'], line, 'dest_ip');
  if (srcIpv4 >= 0 !== destIpv4 >= 0) fail(line, 'src_ip and dest_ip are of different IP families');
  const conn: Connection =
    protocol === 'icmp'
      ? { srcIp, destIp, srcIpv4, destIpv4, protocol }
      : { srcIp, destIp, srcIpv4, destIpv4, srcPort: port(f['src_port'], line, 'src_port', false) ?? 0, destPort: port(f['dest_port'], line, 'dest_port', true), protocol };
  return { line, timestamp: time.timestamp, t: time.t, conn };
}

function hubbleEndpoint(raw: unknown): PolicyActionEndpoint | undefined {
  const e = (raw ?? {}) as Record<string, unknown>;
  if (typeof e['pod_name'] !== 'string' || e['pod_name'] === '') return undefined;
  const podName = e['pod_name'];
  const namespace = typeof e['namespace'] === 'string' ? e['namespace'] : 'default';
  const workload = (Array.isArray(e['workloads']) ? e['workloads'][0] : undefined) as { name?: string; kind?: string } | undefined;
  let owner: { name: string; kind: string } | undefined;
  if (workload?.name && workload.kind) {
    // Hubble names the Deployment; GKE's record names the pod's owner, the ReplicaSet `<deployment>-<hash>`.
    const rs = podName.slice(0, podName.lastIndexOf('-'));
    owner = workload.kind === 'Deployment' && rs.startsWith(`${workload.name}-`) ? { name: rs, kind: 'ReplicaSet' } : { name: workload.name, kind: workload.kind };
  }
  return { pod_name: podName, pod_namespace: namespace, namespace, ...(owner ? { workload_name: owner.name, workload_kind: owner.kind } : {}) };
}

const POLICY_DROP_REASONS = new Set(['POLICY_DENIED', 'POLICY_DENY', 'AUTH_REQUIRED']);

/**
 * One `hubble observe -o json` line (`{"flow":{…},"node_name","time"}`, or a bare flow). Undefined when the line is
 * not a policy verdict on a new connection: replies, non-initial TCP segments, drops for other reasons, L7 events.
 */
export function parseHubbleFlow(text: string, line: number): ObservedFlow | undefined {
  const root = parseJsonLine(text, line);
  const flow = (root['flow'] ?? root) as Record<string, unknown>;
  if (typeof flow !== 'object' || flow === null) fail(line, 'flow: not an object');
  const ipPart = flow['IP'] as Record<string, unknown> | undefined;
  if (!ipPart) return undefined;
  const direction = flow['traffic_direction'] === 'INGRESS' ? 'ingress' : flow['traffic_direction'] === 'EGRESS' ? 'egress' : undefined;
  if (!direction || flow['is_reply'] === true) return undefined;
  const verdict = flow['verdict'];
  let allowed: boolean;
  if (verdict === 'FORWARDED' || verdict === 'REDIRECTED') allowed = true;
  else if (verdict === 'DROPPED') {
    const reason = flow['drop_reason_desc'];
    if (reason !== undefined && !POLICY_DROP_REASONS.has(reason as string)) return undefined;
    allowed = false;
  } else return undefined;
  const l4 = (flow['l4'] ?? {}) as Record<string, Record<string, unknown> | undefined>;
  const srcIp = ip(ipPart['source'], line, 'flow.IP.source');
  const destIp = ip(ipPart['destination'], line, 'flow.IP.destination');
  let conn: Connection;
  const layer = l4['TCP'] ?? l4['UDP'] ?? l4['SCTP'];
  if (layer) {
    const protocol: Protocol = l4['TCP'] ? 'tcp' : l4['UDP'] ? 'udp' : 'sctp';
    const flags = l4['TCP']?.['flags'] as Record<string, boolean> | undefined;
    if (flags && allowed && !(flags['SYN'] && !flags['ACK'])) return undefined;
    conn = { srcIp, destIp, srcPort: port(layer['source_port'] ?? 0, line, 'flow.l4.source_port', false), destPort: port(layer['destination_port'] ?? 0, line, 'flow.l4.destination_port', false), protocol };
  } else if (l4['ICMPv4'] || l4['ICMPv6']) conn = { srcIp, destIp, protocol: 'icmp' };
  else return undefined;
  const time = flowTime(flow['time'] ?? root['time'], line, 'flow.time');
  const allowedByRaw = flow[direction === 'egress' ? 'egress_allowed_by' : 'ingress_allowed_by'];
  const allowedBy = (Array.isArray(allowedByRaw) ? allowedByRaw : []).map((p: Record<string, unknown>) => ({
    name: typeof p?.['name'] === 'string' ? p['name'] : '',
    ...(typeof p?.['namespace'] === 'string' ? { namespace: p['namespace'] } : {}),
  }));
  const nodeName = (flow['node_name'] ?? root['node_name']) as string | undefined;
  const src = hubbleEndpoint(flow['source']);
  const dest = hubbleEndpoint(flow['destination']);
  return { line, ...time, conn, direction, allowed, allowedBy, ...(typeof nodeName === 'string' ? { nodeName } : {}), ...(src ? { src } : {}), ...(dest ? { dest } : {}) };
}

/** Lines of a stream in batches, numbered from 1; a line longer than `maxLineBytes` is reported as a parse error. */
export async function* readLineBatches(stream: Readable, maxLineBytes = 1024 * 1024): AsyncGenerator<{ text: string; line: number }[]> {
  let carry = '';
  let lineNo = 0;
  let skipping = false;
  stream.setEncoding('utf8');
  for await (const chunk of stream as AsyncIterable<string>) {
    const batch: { text: string; line: number }[] = [];
    let start = 0;
    let nl = chunk.indexOf('\n');
    while (nl >= 0) {
      const text = carry + chunk.slice(start, nl);
      carry = '';
      lineNo++;
      if (skipping) {
        skipping = false;
        batch.push({ text: '', line: -lineNo });
      } else if (text.length > 0 && text.trim() !== '') batch.push({ text: text.endsWith('\r') ? text.slice(0, -1) : text, line: lineNo });
      start = nl + 1;
      nl = chunk.indexOf('\n', start);
    }
    if (!skipping) carry += chunk.slice(start);
    if (carry.length > maxLineBytes) {
      carry = '';
      skipping = true;
    }
    if (batch.length) yield batch;
  }
  if (skipping) yield [{ text: '', line: -(lineNo + 1) }];
  else if (carry.trim() !== '') yield [{ text: carry, line: lineNo + 1 }];
}

/** Parses one line of `format`; throws NetpolError('FLOW_PARSE') naming the line. Negative lines are over-long ones. */
export function parseFlowLine(format: FlowFormat, text: string, line: number): TupleFlow | ObservedFlow | undefined {
  if (line < 0) fail(-line, 'longer than the line limit, skipped');
  return format === 'tuple' ? parseTupleFlow(text, line) : parseHubbleFlow(text, line);
}
