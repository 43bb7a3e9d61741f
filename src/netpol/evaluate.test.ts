import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { PolicyActionRecord } from '../model/index.ts';
import { clusterWith, IP, policyYaml as policy, record } from '../../test/netpol/helpers.ts';
import { evaluate } from './evaluate.ts';
import { PolicyActionRecorder } from './recorder.ts';
import { DEFAULT_SETTINGS } from './settings.ts';
import type { Protocol } from './model.ts';

const { web: WEB, db: DB, cache: CACHE, client: CLIENT, tool: TOOL, node1: NODE1, node2: NODE2 } = IP;
const NODE1_GATEWAY = '10.8.0.1';

/** Records as `direction disposition [policies]`, the way the rows read. */
function recordsFor(policies: string, src: string, dest: string, port: number | undefined, protocol: Protocol): { allowed: boolean; records: string[] } {
  const { cluster, warnings } = clusterWith(policies);
  assert.deepEqual(warnings.filter((w) => w.includes('invalid')), []);
  const { records, allowed } = record(cluster, [[0, src, dest, 40000, port, protocol]]);
  const conn = protocol === 'icmp' ? { srcIp: src, destIp: dest, protocol } : { srcIp: src, destIp: dest, srcPort: 40000, destPort: port, protocol };
  assert.equal(allowed[0], evaluate(cluster, conn).allowed);
  return {
    allowed: allowed[0]!,
    records: records.map((r) => `${r.connection.direction} ${r.disposition}${r.policies ? ` ${r.policies.map((p) => (p.namespace ? `${p.namespace}/${p.name}` : `"${p.name}"`)).sort().join(',')}` : ''}`),
  };
}

const denyAllIngress = (ns: string) => policy('deny-all', ns, 'podSelector: {}\npolicyTypes: [Ingress]');

interface Row {
  spec: string;
  policies: string;
  flow: [src: string, dest: string, port: number | undefined, protocol: Protocol];
  allowed: boolean;
  records: string[];
}

const rows: Row[] = [
  { spec: 'no policy selects either pod: allowed, no record', policies: '', flow: [CLIENT, WEB, 8080, 'tcp'], allowed: true, records: [] },
  { spec: 'ingress isolation by an empty podSelector with no rules denies, recorded at the destination', policies: denyAllIngress('prod'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: false, records: ['ingress deny'] },
  { spec: 'a policy in another namespace does not isolate', policies: denyAllIngress('dev'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: true, records: [] },
  { spec: 'policyTypes default to Ingress only when there are no egress rules', policies: policy('p', 'dev', 'podSelector: {}\ningress: []\negress: []'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: true, records: [] },
  { spec: 'policyTypes default to Ingress and Egress when egress rules exist', policies: policy('p', 'dev', 'podSelector: {}\negress: [{to: [{podSelector: {matchLabels: {app: tool}}}]}]'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: false, records: ['egress deny'] },
  { spec: 'ingress: [{}] allows everything, listed as the allowing policy', policies: policy('allow-all', 'prod', 'podSelector: {}\ningress: [{}]'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: true, records: ['ingress allow prod/allow-all'] },
  { spec: 'the union of all allowing policies is listed', policies: policy('a', 'prod', 'podSelector: {}\ningress: [{}]') + policy('b', 'prod', 'podSelector: {matchLabels: {app: web}}\ningress: [{ports: [{port: 8080}]}]') + policy('c', 'prod', 'podSelector: {matchLabels: {app: web}}\ningress: [{ports: [{port: 9999}]}]'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: true, records: ['ingress allow prod/a,prod/b'] },
  { spec: 'namespaceSelector AND podSelector in one peer: both must match', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {env: dev}}, podSelector: {matchLabels: {team: a}}}]}]'), flow: [TOOL, WEB, 8080, 'tcp'], allowed: false, records: ['ingress deny'] },
  { spec: 'namespaceSelector and podSelector as separate peers: either matches', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {env: dev}}}, {podSelector: {matchLabels: {team: a}}}]}]'), flow: [TOOL, WEB, 8080, 'tcp'], allowed: true, records: ['ingress allow prod/p'] },
  { spec: 'a podSelector peer alone means the policy namespace only', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: false, records: ['ingress deny'] },
  { spec: 'namespaces match by kubernetes.io/metadata.name even when the manifest lacked it', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: dev}}}]}]'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: true, records: ['ingress allow prod/p'] },
  { spec: 'matchExpressions In', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: app, operator: In, values: [client, x]}]}}]}]'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: true, records: ['ingress allow prod/p'] },
  { spec: 'matchExpressions NotIn matches pods without the key too', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: team, operator: NotIn, values: [a]}]}}]}]'), flow: [TOOL, WEB, 8080, 'tcp'], allowed: true, records: ['ingress allow prod/p'] },
  { spec: 'matchExpressions Exists', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: team, operator: Exists}]}}]}]'), flow: [TOOL, WEB, 8080, 'tcp'], allowed: false, records: ['ingress deny'] },
  { spec: 'matchExpressions DoesNotExist', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}}]}]'), flow: [TOOL, WEB, 8080, 'tcp'], allowed: true, records: ['ingress allow prod/p'] },
  { spec: 'ipBlock except carves an address out', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.0/28]}}]}]'), flow: ['203.0.113.5', WEB, 8080, 'tcp'], allowed: false, records: ['ingress deny'] },
  { spec: 'another rule re-allows an excepted address', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.0/28]}}]}, {from: [{ipBlock: {cidr: 203.0.113.5/32}}]}]'), flow: ['203.0.113.5', WEB, 8080, 'tcp'], allowed: true, records: ['ingress allow prod/p'] },
  { spec: 'ipBlock never matches a pod IP (Dataplane V2)', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}]}]'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: false, records: ['ingress deny'] },
  { spec: 'an IPv4 block never matches an IPv6 address', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]'), flow: ['2001:db8::1', 'fd00::10', 8080, 'tcp'], allowed: false, records: ['ingress deny'] },
  { spec: 'an IPv6 block matches an IPv6 address', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{ipBlock: {cidr: "2001:db8::/32"}}]}]'), flow: ['2001:db8::1', 'fd00::10', 8080, 'tcp'], allowed: true, records: ['ingress allow prod/p'] },
  { spec: 'a port without protocol means TCP: UDP is denied', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{ports: [{port: 53}]}]'), flow: [CLIENT, WEB, 53, 'udp'], allowed: false, records: ['ingress deny'] },
  { spec: 'a UDP rule does not allow TCP', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{ports: [{port: 53, protocol: UDP}]}]'), flow: [CLIENT, WEB, 53, 'tcp'], allowed: false, records: ['ingress deny'] },
  { spec: 'an SCTP rule allows SCTP', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{ports: [{port: 9000, protocol: SCTP}]}]'), flow: [CLIENT, WEB, 9000, 'sctp'], allowed: true, records: ['ingress allow prod/p'] },
  { spec: 'endPort is inclusive', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{ports: [{port: 8000, endPort: 8080}]}]'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: true, records: ['ingress allow prod/p'] },
  { spec: 'one past endPort is denied', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{ports: [{port: 8000, endPort: 8080}]}]'), flow: [CLIENT, WEB, 8081, 'tcp'], allowed: false, records: ['ingress deny'] },
  { spec: 'a protocol without a port allows every port of it', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{ports: [{protocol: UDP}]}]'), flow: [CLIENT, WEB, 5353, 'udp'], allowed: true, records: ['ingress allow prod/p'] },
  { spec: 'a named port resolves on the destination pod', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{ports: [{port: http}]}]'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: true, records: ['ingress allow prod/p'] },
  { spec: 'a named port must match the protocol of the container port', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{ports: [{port: dns}]}]'), flow: [CLIENT, WEB, 53, 'tcp'], allowed: false, records: ['ingress deny'] },
  { spec: 'a named egress port resolves on the destination pod, not the source', policies: policy('p', 'prod', 'podSelector: {matchLabels: {app: web}}\npolicyTypes: [Egress]\negress: [{ports: [{port: redis}]}]'), flow: [WEB, CACHE, 6379, 'tcp'], allowed: true, records: ['egress allow prod/p'] },
  { spec: 'a named egress port to a non-pod never matches', policies: policy('p', 'prod', 'podSelector: {matchLabels: {app: web}}\npolicyTypes: [Egress]\negress: [{ports: [{port: redis}]}]'), flow: [WEB, '198.51.100.1', 6379, 'tcp'], allowed: false, records: ['egress deny'] },
  { spec: 'ICMP is allowed by a rule without ports', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{namespaceSelector: {}}]}]'), flow: [CLIENT, WEB, undefined, 'icmp'], allowed: true, records: ['ingress allow prod/p'] },
  { spec: 'ICMP is never allowed by a rule with ports', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{ports: [{protocol: TCP}, {protocol: UDP}]}]'), flow: [CLIENT, WEB, undefined, 'icmp'], allowed: false, records: ['ingress deny'] },
  { spec: 'egress is decided at the source, ingress at the destination: two records', policies: policy('e', 'dev', 'podSelector: {}\npolicyTypes: [Egress]\negress: [{}]') + policy('i', 'prod', 'podSelector: {}\ningress: [{from: [{namespaceSelector: {}}]}]'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: true, records: ['egress allow dev/e', 'ingress allow prod/i'] },
  { spec: 'a connection denied on egress never reaches ingress', policies: policy('e', 'dev', 'podSelector: {}\npolicyTypes: [Egress]') + denyAllIngress('prod'), flow: [CLIENT, WEB, 8080, 'tcp'], allowed: false, records: ['egress deny'] },
  { spec: "traffic from the pod's own node (kubelet probes) is allowed with an empty policy name", policies: denyAllIngress('prod'), flow: [NODE1, WEB, 8080, 'tcp'], allowed: true, records: ['ingress allow ""'] },
  { spec: "the node's cilium_host gateway in its pod CIDR counts as the node", policies: denyAllIngress('prod'), flow: [NODE1_GATEWAY, WEB, 8080, 'tcp'], allowed: true, records: ['ingress allow ""'] },
  { spec: "another node's IP is an outside address", policies: denyAllIngress('prod'), flow: [NODE2, WEB, 8080, 'tcp'], allowed: false, records: ['ingress deny'] },
  { spec: "an ipBlock matches another node's IP", policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.128.0.0/16}}]}]'), flow: [NODE2, WEB, 8080, 'tcp'], allowed: true, records: ['ingress allow prod/p'] },
  { spec: "egress to the pod's own node is allowed", policies: policy('e', 'prod', 'podSelector: {}\npolicyTypes: [Egress]'), flow: [WEB, NODE1, 10250, 'tcp'], allowed: true, records: ['egress allow ""'] },
  { spec: 'a pod talking to itself is never blocked and writes no record', policies: policy('e', 'prod', 'podSelector: {}\npolicyTypes: [Egress, Ingress]'), flow: [WEB, WEB, 8080, 'tcp'], allowed: true, records: [] },
  { spec: 'an unknown source IP is an outside address', policies: policy('p', 'prod', 'podSelector: {}\ningress: [{from: [{podSelector: {}}]}]'), flow: ['192.0.2.9', DB, 5432, 'tcp'], allowed: false, records: ['ingress deny'] },
  { spec: 'neither end a pod: no policy applies', policies: denyAllIngress('prod'), flow: ['192.0.2.9', '192.0.2.10', 80, 'tcp'], allowed: true, records: [] },
  { spec: 'a pod without an IP is not a pod to flows', policies: policy('p', 'dev', 'podSelector: {matchLabels: {app: pending}}\npolicyTypes: [Egress]'), flow: ['10.8.1.99', WEB, 8080, 'tcp'], allowed: true, records: [] },
];

describe('NetworkPolicy semantics (Kubernetes + GKE Dataplane V2)', () => {
  for (const row of rows)
    test(row.spec, () => {
      const [src, dest, port, protocol] = row.flow;
      const got = recordsFor(row.policies, src, dest, port, protocol);
      assert.equal(got.allowed, row.allowed, 'verdict');
      assert.deepEqual(got.records, row.records);
    });
});

describe('records', () => {
  test('have the seed key order, endpoints and nine-digit timestamps kept', () => {
    const { cluster } = clusterWith(policy('allow-green', 'prod', 'podSelector: {}\ningress: [{}]'));
    const records: PolicyActionRecord[] = [];
    const recorder = new PolicyActionRecorder(cluster, { settings: DEFAULT_SETTINGS, emit: (r) => records.push(r) });
    recorder.onFlow({ line: 1, timestamp: '2020-06-16T03:10:37.993712906Z', t: 1592277037.993, conn: { srcIp: CLIENT, destIp: WEB, srcPort: 52648, destPort: 8080, protocol: 'tcp' } });
    assert.equal(
      JSON.stringify(records[0]),
      '{"connection":{"src_ip":"10.8.1.20","dest_ip":"10.8.0.10","src_port":52648,"dest_port":8080,"protocol":"tcp","direction":"ingress"},"disposition":"allow","policies":[{"name":"allow-green","namespace":"prod"}],' +
        '"src":{"pod_name":"client","pod_namespace":"dev","namespace":"dev"},' +
        '"dest":{"pod_name":"web-7b78d7c957-68mv4","pod_namespace":"prod","namespace":"prod","workload_name":"web-7b78d7c957","workload_kind":"ReplicaSet"},' +
        '"count":1,"node_name":"node-1","timestamp":"2020-06-16T03:10:37.993712906Z"}',
    );
  });

  test('a probe record names the node address as instance, like the seed example', () => {
    const { cluster } = clusterWith(denyAllIngress('prod'));
    const records: PolicyActionRecord[] = [];
    new PolicyActionRecorder(cluster, { settings: DEFAULT_SETTINGS, emit: (r) => records.push(r) }).onFlow({ line: 1, timestamp: '2021-04-01T12:42:32.189872094Z', t: 1617280952, conn: { srcIp: NODE1_GATEWAY, destIp: DB, srcPort: 35848, destPort: 15021, protocol: 'tcp' } });
    assert.deepEqual(records[0]!.src, { instance: NODE1_GATEWAY });
    assert.deepEqual(records[0]!.policies, [{ name: '' }]);
    assert.equal(records[0]!.dest.workload_kind, 'StatefulSet');
  });

  test('ICMP connections carry no ports', () => {
    const { cluster } = clusterWith(denyAllIngress('prod'));
    const records: PolicyActionRecord[] = [];
    const recorder = new PolicyActionRecorder(cluster, { settings: DEFAULT_SETTINGS, emit: (r) => records.push(r) });
    recorder.onFlow({ line: 1, timestamp: '2024-01-01T00:00:00Z', t: 0, conn: { srcIp: CLIENT, destIp: WEB, protocol: 'icmp' } });
    recorder.finish();
    assert.deepEqual(records[0]!.connection, { src_ip: CLIENT, dest_ip: WEB, protocol: 'icmp', direction: 'ingress' });
  });
});
