import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { NetpolError, parseNetworkLogging } from '../../src/netpol/index.ts';
import { serializeRecord } from '../../src/netpol/recorder.ts';
import { serveMetrics } from '../../src/telemetry/index.ts';
import { clusterWith, IP, loggingYaml, metricValue, policyYaml, record, type TestFlow } from './helpers.ts';

// prod carries policy.network.gke.io/enable-deny-logging: "true"; dev does not (fixtures/netpol/cluster.yaml).
const PROD_INGRESS = policyYaml('web-from-dev', 'prod', 'podSelector: {matchLabels: {app: web}}\ningress: [{from: [{namespaceSelector: {matchLabels: {env: dev}}}], ports: [{port: 8080}]}]', 'policy.network.gke.io/enable-logging: "true"') +
  policyYaml('web-http', 'prod', 'podSelector: {matchLabels: {app: web}}\ningress: [{ports: [{port: 8080}]}]');
const DEV_EGRESS_DENY = policyYaml('deny-egress', 'dev', 'podSelector: {}\npolicyTypes: [Egress]');
const on = { log: true, delegate: false };

describe('NetworkLogging', () => {
  const allowFlow: TestFlow = [0, IP.tool, IP.web, 40000, 8080, 'tcp'];
  const denyFlow: TestFlow = [0, IP.tool, IP.web, 40001, 9090, 'tcp'];
  const rows: { spec: string; allow: { log: boolean; delegate: boolean }; deny: { log: boolean; delegate: boolean }; flow: TestFlow; extra?: string; want: string[] }[] = [
    { spec: 'allow.log false: allowed connections are not logged', allow: { log: false, delegate: false }, deny: on, flow: allowFlow, want: [] },
    { spec: 'allow.log true, delegate false: every allowing policy is listed', allow: on, deny: on, flow: allowFlow, want: ['allow prod/web-from-dev,prod/web-http'] },
    { spec: 'allow delegate: only policies annotated enable-logging "true" are listed', allow: { log: true, delegate: true }, deny: on, flow: allowFlow, want: ['allow prod/web-from-dev'] },
    { spec: 'allow delegate: nothing is logged when no allowing policy is annotated', allow: { log: true, delegate: true }, deny: on, flow: [0, IP.db, IP.web, 40000, 8080, 'tcp'], want: [] },
    { spec: 'allow delegate: probe records have no annotated policy, so they are not logged', allow: { log: true, delegate: true }, deny: on, flow: [0, IP.node1, IP.web, 40000, 15021, 'tcp'], want: [] },
    { spec: 'deny.log false: denied connections are not logged', allow: on, deny: { log: false, delegate: false }, flow: denyFlow, want: [] },
    { spec: 'deny delegate: logged in a namespace annotated enable-deny-logging "true"', allow: on, deny: { log: true, delegate: true }, flow: denyFlow, want: ['deny'] },
    { spec: 'deny delegate: not logged in a namespace without the annotation', allow: on, deny: { log: true, delegate: true }, flow: [0, IP.client, IP.web, 40000, 8080, 'tcp'], extra: DEV_EGRESS_DENY, want: [] },
  ];
  for (const row of rows)
    test(row.spec, () => {
      const { cluster } = clusterWith(PROD_INGRESS + (row.extra ?? '') + loggingYaml(row.allow, row.deny));
      const { records } = record(cluster, [row.flow]);
      assert.deepEqual(records.map((r) => `${r.disposition}${r.policies ? ` ${r.policies.map((p) => `${p.namespace}/${p.name}`).sort().join(',')}` : ''}`), row.want);
    });

  test('delegate with log false is rejected with the controller message, for allow and for deny', () => {
    assert.throws(() => parseNetworkLogging({ cluster: { allow: { log: false, delegate: true } } }), { code: 'INVALID_LOGGING', message: 'cluster allow log action is invalid: delegate cannot be true when log is false' });
    assert.throws(() => parseNetworkLogging({ cluster: { allow: { log: true }, deny: { log: false, delegate: true } } }), { code: 'INVALID_LOGGING', message: 'cluster deny log action is invalid: delegate cannot be true when log is false' });
    assert.throws(() => parseNetworkLogging({ cluster: { allow: { log: 'yes' } } }), (err: NetpolError) => err.message.startsWith('spec.cluster.allow.log: Invalid value: "yes"'));
  });

  test('missing fields are false', () => {
    assert.deepEqual(parseNetworkLogging({ cluster: { allow: { log: true } } }), { allow: { log: true, delegate: false }, deny: { log: false, delegate: false } });
  });
});

describe('deny aggregation', () => {
  const denyAll = policyYaml('deny-all', 'prod', 'podSelector: {}\npolicyTypes: [Ingress]');

  test('retries within 5 s of the first deny are one record with its timestamp, src_port and a count', () => {
    const { cluster } = clusterWith(denyAll);
    const { records } = record(cluster, [
      [0.5, IP.client, IP.web, 39610, 8080, 'tcp'],
      [1.5, IP.client, IP.web, 39611, 8080, 'tcp'],
      [5.4, IP.client, IP.web, 39612, 8080, 'tcp'],
      [5.5, IP.client, IP.web, 39613, 8080, 'tcp'], // 5 s after the first: a new window
      [6, IP.client, IP.web, 39614, 8081, 'tcp'], // another dest_port: another key
    ]);
    assert.deepEqual(
      records.map((r) => [r.connection.src_port, r.connection.dest_port, r.count, r.timestamp]),
      [
        [39610, 8080, 3, '2024-01-01T00:00:00.500Z'],
        [39613, 8080, 1, '2024-01-01T00:00:05.500Z'],
        [39614, 8081, 1, '2024-01-01T00:00:06.000Z'],
      ],
    );
  });

  test('the same tuple in the other direction is another key', () => {
    const { cluster } = clusterWith(denyAll + policyYaml('deny-egress', 'dev', 'podSelector: {}\npolicyTypes: [Egress]') + policyYaml('deny-egress', 'prod', 'podSelector: {}\npolicyTypes: [Egress]'));
    const { records } = record(cluster, [
      [0, IP.client, IP.tool, 1, 80, 'tcp'],
      [1, IP.web, IP.db, 1, 80, 'tcp'],
    ]);
    assert.deepEqual(records.map((r) => r.connection.direction), ['egress', 'egress']);
  });

  test('at most N open keys: the overflow is dropped and counted as aggregation_limit', async () => {
    const { cluster } = clusterWith(denyAll);
    const before = await metricValue('policy_logging_drop_count', { enforcement: 'ingress', reason: 'aggregation_limit' });
    const flows: TestFlow[] = [1, 2, 3, 4, 5].map((p) => [0, IP.client, IP.web, 40000, p, 'tcp']);
    const { records } = record(cluster, flows, { denyAggregationMaxKeys: 3 });
    assert.deepEqual(records.map((r) => r.connection.dest_port), [1, 2, 3]);
    assert.equal((await metricValue('policy_logging_drop_count', { enforcement: 'ingress', reason: 'aggregation_limit' })) - before, 2);
  });
});

describe('connections of datagram protocols', () => {
  test('UDP packets of one 5-tuple within 60 s of the last are one connection', () => {
    const { cluster } = clusterWith(policyYaml('dns', 'prod', 'podSelector: {}\ningress: [{ports: [{port: 53, protocol: UDP}]}]'));
    const { records, allowed } = record(cluster, [
      [0, IP.client, IP.web, 5000, 53, 'udp'],
      [50, IP.client, IP.web, 5000, 53, 'udp'],
      [109, IP.client, IP.web, 5000, 53, 'udp'],
      [170, IP.client, IP.web, 5000, 53, 'udp'], // 61 s of silence: a new connection
      [170, IP.client, IP.web, 5001, 53, 'udp'], // another source port: another connection
    ]);
    assert.equal(records.length, 3);
    assert.deepEqual(allowed, [true, undefined, undefined, true, true]);
  });

  test('ICMP groups the same way; TCP attempts are each a connection', () => {
    const { cluster } = clusterWith(policyYaml('all', 'prod', 'podSelector: {}\ningress: [{}]'));
    const { records } = record(cluster, [
      [0, IP.client, IP.web, 0, undefined, 'icmp'],
      [1, IP.client, IP.web, 0, undefined, 'icmp'],
      [0, IP.client, IP.web, 6000, 8080, 'tcp'],
      [1, IP.client, IP.web, 6000, 8080, 'tcp'],
    ]);
    assert.deepEqual(records.map((r) => r.connection.protocol), ['icmp', 'tcp', 'tcp']);
  });
});

describe('rate limit per node', () => {
  test('a node logs at most the rate per second of flow time; the verdict is unchanged and drops are counted', async () => {
    const { cluster } = clusterWith(policyYaml('all', 'prod', 'podSelector: {}\ningress: [{}]'));
    const before = await metricValue('policy_logging_drop_count', { enforcement: 'ingress', reason: 'rate_limit' });
    const burst = (t: number, n: number): TestFlow[] => Array.from({ length: n }, (_, i) => [t + i / 1000, IP.client, IP.web, 10000 + i, 8080, 'tcp']);
    const { records, allowed } = record(cluster, [...burst(0, 25), ...burst(1.5, 25)], { rateLimitPerSecond: 10 });
    // 10 at once (no burst above the rate), then 10 more after the bucket refilled.
    assert.equal(records.length, 20);
    assert.ok(allowed.every((a) => a === true));
    assert.equal((await metricValue('policy_logging_drop_count', { enforcement: 'ingress', reason: 'rate_limit' })) - before, 30);
  });

  test('buckets are per node, and an aggregated deny takes a token', () => {
    const { cluster } = clusterWith(policyYaml('deny-all', 'prod', 'podSelector: {}\npolicyTypes: [Ingress]'));
    const flows: TestFlow[] = [
      ...Array.from({ length: 4 }, (_, i): TestFlow => [0, IP.client, IP.web, 100 + i, 1000 + i, 'tcp']), // node-1
      ...Array.from({ length: 4 }, (_, i): TestFlow => [0, IP.client, IP.cache, 100 + i, 1000 + i, 'tcp']), // node-2
    ];
    const { records } = record(cluster, flows, { rateLimitPerSecond: 2 });
    assert.deepEqual(records.map((r) => r.node_name).sort(), ['node-1', 'node-1', 'node-2', 'node-2']);
  });

  test('0 turns the limit off', () => {
    const { cluster } = clusterWith(policyYaml('all', 'prod', 'podSelector: {}\ningress: [{}]'));
    const flows = Array.from({ length: 2000 }, (_, i): TestFlow => [0, IP.client, IP.web, i, 8080, 'tcp']);
    assert.equal(record(cluster, flows, { rateLimitPerSecond: 0 }).records.length, 2000);
  });
});

describe('--node', () => {
  test('a node logs only the verdicts enforced on it; by default each record names the enforcing pod node', () => {
    const { cluster } = clusterWith(policyYaml('e', 'prod', 'podSelector: {}\npolicyTypes: [Egress]\negress: [{}]') + policyYaml('i', 'prod', 'podSelector: {}\ningress: [{}]'));
    const flow: TestFlow = [0, IP.web, IP.cache, 1, 6379, 'tcp']; // web on node-1 → cache on node-2
    assert.deepEqual(record(cluster, [flow]).records.map((r) => `${r.connection.direction}@${r.node_name}`), ['egress@node-1', 'ingress@node-2']);
    assert.deepEqual(record(cluster, [flow], {}, 'node-2').records.map((r) => `${r.connection.direction}@${r.node_name}`), ['ingress@node-2']);
  });
});

describe('metrics', () => {
  test('the four policy_logging counters are served on /metrics (as --metrics-listen does)', async () => {
    const { cluster } = clusterWith(policyYaml('i', 'prod', 'podSelector: {}\ningress: []'));
    record(cluster, [[0, IP.client, IP.web, 1, 8080, 'tcp']], { denyAggregationMaxKeys: 1 });
    const server = await serveMetrics('127.0.0.1:0');
    try {
      const { port } = server.address() as { port: number };
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      for (const name of ['policy_logging_event_count{verdict="deny"}', 'policy_logging_log_count{enforcement="ingress",verdict="deny"}', '# TYPE policy_logging_drop_count counter', '# TYPE policy_logging_error_count counter'])
        assert.ok(text.includes(name), name);
    } finally {
      server.close();
    }
  });

  test('events and logs are counted by verdict and enforcement', async () => {
    const { cluster } = clusterWith(policyYaml('i', 'prod', 'podSelector: {matchLabels: {app: web}}\ningress: [{ports: [{port: 8080}]}]'));
    const read = async () => [
      await metricValue('policy_logging_event_count', { verdict: 'allow' }),
      await metricValue('policy_logging_event_count', { verdict: 'deny' }),
      await metricValue('policy_logging_log_count', { enforcement: 'ingress', verdict: 'allow' }),
      await metricValue('policy_logging_log_count', { enforcement: 'ingress', verdict: 'deny' }),
    ];
    const before = await read();
    record(cluster, [
      [0, IP.client, IP.web, 1, 8080, 'tcp'],
      [0, IP.client, IP.web, 2, 9090, 'tcp'],
      [1, IP.client, IP.web, 3, 9090, 'tcp'],
    ]);
    const after = await read();
    assert.deepEqual(after.map((v, i) => v - before[i]!), [1, 2, 1, 1]);
  });
});

describe('serialization', () => {
  test('the fast NDJSON line is exactly JSON.stringify of the record (allow, deny, probe, ICMP, external, names needing escapes)', () => {
    const { cluster } = clusterWith(
      policyYaml('all', 'prod', 'podSelector: {matchLabels: {app: web}}\ningress: [{ports: [{port: 8080}]}]') + policyYaml('d', 'dev', 'podSelector: {}\npolicyTypes: [Egress]\negress: [{ports: [{port: 53, protocol: UDP}]}]'),
    );
    cluster.podsByIp.get(IP.web)!.nodeName = 'node "quoted" \\ 1';
    const { records } = record(cluster, [
      [0, IP.client, IP.web, 1, 8080, 'tcp'],
      [0, IP.client, IP.web, 2, 9090, 'tcp'],
      [0, IP.node1, IP.web, 3, 8080, 'tcp'],
      [0, IP.client, IP.web, 0, undefined, 'icmp'],
      [0, IP.tool, '198.51.100.7', 4, 53, 'udp'],
      [0, '2001:db8::1', 'fd00::10', 5, 8080, 'tcp'],
    ]);
    assert.ok(records.length >= 6);
    assert.ok(records.some((r) => r.node_name.includes('"')));
    for (const r of records) assert.equal(serializeRecord(r), JSON.stringify(r));
  });
});
