import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, test } from 'node:test';
import type { PolicyActionRecord } from '../../src/model/index.ts';
import { runNetpol } from '../../src/netpol/index.ts';
import { parseTupleFlow } from '../../src/netpol/flows.ts';
import { FIXTURES, metricValue } from './helpers.ts';

describe('tuple flows', () => {
  const rows: [string, string, string][] = [
    ['not JSON', '{"time":', 'line 7: not JSON'],
    ['an array', '[1,2]', 'line 7: not a JSON object'],
    ['unknown protocol', '{"time":"2024-01-01T00:00:00Z","src_ip":"10.0.0.1","dest_ip":"10.0.0.2","dest_port":80,"protocol":"gre"}', 'line 7: protocol: "gre" is not one of tcp, udp, sctp, icmp'],
    ['bad time', '{"time":"yesterday","src_ip":"10.0.0.1","dest_ip":"10.0.0.2","dest_port":80,"protocol":"tcp"}', 'line 7: time: "yesterday" is not an RFC 3339 timestamp'],
    ['bad IP', '{"time":"2024-01-01T00:00:00Z","src_ip":"10.0.0.256","dest_ip":"10.0.0.2","dest_port":80,"protocol":"tcp"}', 'line 7: src_ip: "10.0.0.256" is not an IP address'],
    ['missing port', '{"time":"2024-01-01T00:00:00Z","src_ip":"10.0.0.1","dest_ip":"10.0.0.2","protocol":"udp"}', 'line 7: dest_port: required for this protocol'],
    ['port out of range', '{"time":"2024-01-01T00:00:00Z","src_ip":"10.0.0.1","dest_ip":"10.0.0.2","dest_port":65536,"protocol":"tcp"}', 'line 7: dest_port: 65536 is not a port (0-65535)'],
    ['mixed families', '{"time":"2024-01-01T00:00:00Z","src_ip":"10.0.0.1","dest_ip":"fd00::1","dest_port":80,"protocol":"tcp"}', 'line 7: src_ip and dest_ip are of different IP families'],
  ];
  for (const [spec, line, message] of rows) test(`rejects ${spec}, naming the line`, () => assert.throws(() => parseTupleFlow(line, 7), { code: 'FLOW_PARSE', message: new RegExp(`^${message.replace(/[()[\]{}.*+?^$|\\]/g, '\\$&')}`) }));

  test('accepts ICMP without ports, IPv6 in any spelling, and offsets in time (kept as the same instant in UTC)', () => {
    const icmp = parseTupleFlow('{"time":"2024-01-01T01:00:00.5+01:00","src_ip":"FD00:0:0::1","dest_ip":"fd00::2","protocol":"icmp"}', 1);
    assert.deepEqual([icmp.conn.srcIp, icmp.conn.destIp, icmp.conn.protocol, icmp.conn.srcPort], ['fd00::1', 'fd00::2', 'icmp', undefined]);
    assert.equal(icmp.timestamp, '2024-01-01T00:00:00.5Z');
  });

  test('bad lines are skipped, counted as parse_flow_fail, and the good ones still evaluated', async () => {
    const before = await metricValue('policy_logging_error_count', { reason: 'parse_flow_fail' });
    const good = (port: number) => JSON.stringify({ time: '2024-01-01T00:00:00Z', src_ip: '10.8.1.20', src_port: port, dest_ip: '10.8.0.10', dest_port: 8080, protocol: 'tcp' });
    const input = [good(1), 'garbage', '', good(2), '{"time":"x"}', 'x'.repeat(2 * 1024 * 1024), good(3)].join('\n');
    const records: PolicyActionRecord[] = [];
    const summary = await runNetpol({
      manifests: [join(FIXTURES, 'cluster.yaml'), join(FIXTURES, 'hubble-policies.yaml')],
      flows: Readable.from([input]),
      watch: false,
      onRecord: (r) => records.push(r),
    });
    assert.deepEqual(summary, { lines: 6, badLines: 3, records: 3 });
    assert.equal((await metricValue('policy_logging_error_count', { reason: 'parse_flow_fail' })) - before, 3);
    assert.deepEqual(records.map((r) => r.connection.src_port), [1, 2, 3]);
  });
});

describe('hubble flows (`hubble observe -o json`)', () => {
  test('verdicts and allowing policies come from the flow; GKE logging semantics are added', async () => {
    const records: PolicyActionRecord[] = [];
    await runNetpol({
      manifests: [join(FIXTURES, 'cluster.yaml'), join(FIXTURES, 'hubble-policies.yaml')],
      flows: join(FIXTURES, 'hubble.ndjson'),
      format: 'hubble',
      watch: false,
      onRecord: (r) => records.push(r),
    });
    const brief = records.map((r) => ({
      d: `${r.connection.direction} ${r.disposition} ${r.connection.protocol} ${r.connection.src_ip}:${r.connection.src_port ?? ''}→${r.connection.dest_ip}:${r.connection.dest_port ?? ''}`,
      policies: r.policies,
      count: r.count,
      node: r.node_name,
      at: r.timestamp,
    }));
    assert.deepEqual(brief, [
      { d: 'ingress allow tcp 10.8.1.20:52648→10.8.0.10:8080', policies: [{ name: 'web-from-dev', namespace: 'prod' }], count: 1, node: 'node-1', at: '2024-03-01T10:00:00.123456789Z' },
      // The reply (is_reply) and the drop for a non-policy reason write nothing; the second UDP packet is the same connection.
      { d: 'egress allow udp 10.8.0.10:41000→142.250.72.14:443', policies: [{ name: 'web-egress', namespace: 'prod' }], count: 1, node: 'node-1', at: '2024-03-01T10:00:04Z' },
      { d: 'ingress deny tcp 10.8.1.21:39610→10.8.0.10:9090', policies: undefined, count: 2, node: 'node-1', at: '2024-03-01T10:00:01Z' },
      { d: 'ingress allow tcp 10.8.0.1:35848→10.8.0.10:15021', policies: [{ name: '' }], count: 1, node: 'node-1', at: '2024-03-01T10:00:06Z' },
      { d: 'egress allow icmp 10.9.9.9:→10.9.9.8:', policies: [{ name: 'allow-icmp', namespace: 'other' }], count: 1, node: 'node-9', at: '2024-03-01T10:00:07Z' },
    ]);
    // Endpoints known from the manifests come from them; others from Hubble's, Deployment → ReplicaSet as GKE names it.
    assert.deepEqual(records[0]!.dest, { pod_name: 'web-7b78d7c957-68mv4', pod_namespace: 'prod', namespace: 'prod', workload_name: 'web-7b78d7c957', workload_kind: 'ReplicaSet' });
    assert.deepEqual(records[3]!.src, { instance: '10.8.0.1' });
    assert.deepEqual(records[4]!.src, { pod_name: 'a-5d4f8b7c9-zx12q', pod_namespace: 'other', namespace: 'other', workload_name: 'a-5d4f8b7c9', workload_kind: 'ReplicaSet' });
    assert.deepEqual(records[4]!.dest, { pod_name: 'b-0', pod_namespace: 'other', namespace: 'other' });
  });
});

