import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, test } from 'node:test';
import type { PolicyActionRecord } from '../../src/model/index.ts';
import { buildCluster, loadManifests, NetpolError, parseManifestText, runNetpol } from '../../src/netpol/index.ts';
import { BASE_CLUSTER, clusterWith, IP, loggingYaml, metricValue, policyYaml } from './helpers.ts';

function load(text: string) {
  const warnings: string[] = [];
  return buildCluster(parseManifestText(text, 'm.yaml', warnings), undefined, warnings);
}

describe('manifest loading', () => {
  test('kind: List, multi-document YAML and JSON documents all load', () => {
    const { cluster } = clusterWith('{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"json-policy","namespace":"prod"},"spec":{"podSelector":{}}}');
    assert.equal(cluster.pods.length, 5);
    assert.deepEqual(cluster.policies.map((p) => p.name), ['json-policy']);
  });

  test('a kubectl get -o json List loads through JSON', () => {
    const { cluster } = load(JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [{ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', namespace: 'x', labels: { a: 'b' } }, status: { podIP: '10.1.1.1' } }] }));
    assert.equal(cluster.podsByIp.get('10.1.1.1')?.name, 'p');
    assert.equal(cluster.namespaces.get('x')?.labels['kubernetes.io/metadata.name'], 'x');
  });

  test('unknown kinds are skipped with a warning; pods without an IP are skipped with a warning', () => {
    const { cluster, warnings } = clusterWith('apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: y}\n');
    assert.ok(warnings.some((w) => w.includes('kind ConfigMap is not used by netpol, skipped')));
    assert.ok(warnings.some((w) => w.includes('kind Service')));
    assert.ok(warnings.some((w) => w.includes('pod dev/pending has no IP')));
    assert.equal(cluster.pods.length, 5);
  });

  test('a malformed document is skipped with its file and line; the others load', () => {
    const { cluster, warnings } = load(`apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: {name: [unclosed\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n`);
    assert.ok(warnings.some((w) => /^m\.yaml:\d+: malformed YAML, document skipped/.test(w)), warnings.join('\n'));
    assert.deepEqual([...cluster.namespaces.keys()].sort(), ['a', 'b']);
  });

  test('scalars and lists at the top level are not objects, and do not crash', () => {
    const { warnings } = load('just a string\n---\n- 1\n- 2\n');
    assert.equal(warnings.length, 2);
  });

  test('a namespace without kubernetes.io/metadata.name gets it', () => {
    const { cluster } = clusterWith('');
    assert.equal(cluster.namespaces.get('dev')!.labels['kubernetes.io/metadata.name'], 'dev');
  });

  test('workloads: the controller owner, or a Deployment selecting a pod with pod-template-hash (as ReplicaSet)', () => {
    const { cluster } = load(`apiVersion: apps/v1
kind: Deployment
metadata: {name: shop, namespace: default}
spec: {selector: {matchLabels: {app: shop}}}
---
apiVersion: v1
kind: Pod
metadata: {name: shop-745c798fc9-sfd9h, namespace: default, labels: {app: shop, pod-template-hash: 745c798fc9}}
status: {podIP: 10.1.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: lone, labels: {app: lone}}
status: {podIP: 10.1.0.6}
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet, labels: {app: x}}
spec: {hostNetwork: true}
status: {podIP: 10.128.0.9}
`);
    assert.deepEqual(cluster.podsByIp.get('10.1.0.5')!.endpoint, { pod_name: 'shop-745c798fc9-sfd9h', pod_namespace: 'default', namespace: 'default', workload_name: 'shop-745c798fc9', workload_kind: 'ReplicaSet' });
    assert.deepEqual(cluster.podsByIp.get('10.1.0.6')!.endpoint, { pod_name: 'lone', pod_namespace: 'default', namespace: 'default' });
    assert.equal(cluster.podsByIp.get('10.128.0.9'), undefined, 'a host-network pod is its node');
  });

  test('NetworkLogging: an object not named default is ignored; an invalid one is an error keeping the previous setting', () => {
    const ignored = clusterWith(loggingYaml({ log: false, delegate: false }, { log: false, delegate: false }).replace('name: default', 'name: other'));
    assert.ok(ignored.warnings.some((w) => w.includes('NetworkLogging "other" ignored')));
    assert.equal(ignored.cluster.logging.allow.log, true);
    const previous = { allow: { log: false, delegate: false }, deny: { log: true, delegate: true } };
    const warnings: string[] = [];
    const invalid = buildCluster(parseManifestText(loggingYaml({ log: false, delegate: true }, { log: true, delegate: false }), 'l.yaml', warnings), previous, warnings);
    assert.equal(invalid.loggingError?.message, 'cluster allow log action is invalid: delegate cannot be true when log is false');
    assert.deepEqual(invalid.cluster.logging, previous);
  });
});

describe('invalid NetworkPolicies are rejected like the API server does, naming object and field', () => {
  const rows: [string, string, string][] = [
    ['ICMP is not a policy protocol', 'podSelector: {}\ningress: [{ports: [{port: 1, protocol: ICMP}]}]', 'spec.ingress[0].ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"'],
    ['port out of range', 'podSelector: {}\ningress: [{ports: [{port: 70000}]}]', 'spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive'],
    ['endPort with a named port', 'podSelector: {}\negress: [{ports: [{port: http, endPort: 90}]}]', 'spec.egress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is not a number'],
    ['endPort below port', 'podSelector: {}\ningress: [{ports: [{port: 90, endPort: 80}]}]', 'spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to `port`'],
    ['bad port name', 'podSelector: {}\ningress: [{ports: [{port: Not_A_Name}]}]', 'spec.ingress[0].ports[0].port: Invalid value: "Not_A_Name"'],
    ['ipBlock and a selector in one peer', 'podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]', 'spec.ingress[0].from[0]: Forbidden: may not specify more than 1 peer type'],
    ['an empty peer', 'podSelector: {}\ningress: [{from: [{}]}]', 'spec.ingress[0].from[0]: Required value: must specify a peer'],
    ['a bad CIDR', 'podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]', 'spec.ingress[0].from[0].ipBlock.cidr: Invalid value: "10.0.0.0/33": must be a valid CIDR'],
    ['except outside the cidr', 'podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]', 'spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: "10.1.0.0/24": must be a strict subset of `cidr`'],
    ['except of another family', 'podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: ["fd00::/64"]}}]}]', 'spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: "fd00::/64": must be a strict subset of `cidr`'],
    ['unknown policyType', 'podSelector: {}\npolicyTypes: [Ingres]', 'spec.policyTypes[0]: Unsupported value: "Ingres": supported values: "Egress", "Ingress"'],
    ['unknown operator', 'podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}', 'spec.podSelector.matchExpressions[0].operator: Unsupported value: "Equals"'],
    ['In without values', 'podSelector: {}\ningress: [{from: [{namespaceSelector: {matchExpressions: [{key: a, operator: In}]}}]}]', "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"],
    ['Exists with values', 'podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}', "spec.podSelector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"],
  ];
  for (const [spec, policySpec, message] of rows)
    test(spec, async () => {
      const before = await metricValue('policy_logging_error_count', { reason: 'invalid_policy' });
      const { cluster, warnings } = clusterWith(policyYaml('broken', 'prod', policySpec));
      assert.equal(cluster.policies.length, 0, 'not applied');
      const warning = warnings.find((w) => w.includes('NetworkPolicy.networking.k8s.io "broken" is invalid: '));
      assert.ok(warning?.includes(message), `${warning} should contain ${message}`);
      assert.equal(await metricValue('policy_logging_error_count', { reason: 'invalid_policy' }), before, 'counted only by the run, not by building');
    });
});

describe('watched manifests', () => {
  test('a changed policy, label or logging setting applies to the connections after it; an invalid NetworkLogging keeps the last valid one', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'netpol-watch-'));
    // File watches do not hold the process open; this does, and each wait below is bounded.
    const keepAlive = setInterval(() => {}, 1000);
    try {
      const file = join(dir, 'cluster.yaml');
      const allowWeb = policyYaml('web', 'prod', 'podSelector: {matchLabels: {app: web}}\ningress: [{from: [{namespaceSelector: {}}]}]');
      const denyWeb = policyYaml('web', 'prod', 'podSelector: {matchLabels: {app: web}}\ningress: []');
      const on = { log: true, delegate: false };
      writeFileSync(file, `${BASE_CLUSTER}\n---\n${allowWeb}${loggingYaml(on, on)}`);
      const flows = new PassThrough();
      const records: PolicyActionRecord[] = [];
      let reloads = 0;
      let reloaded: () => void = () => {};
      const waitReload = () => new Promise<void>((resolve, reject) => {
        const timeout = setTimeout(() => reject(new Error('no reload within 10 s')), 10_000);
        reloaded = () => (clearTimeout(timeout), resolve());
      });
      const written = (n: number) => new Promise<void>((resolve) => {
        const poll = setInterval(() => records.length >= n && (clearInterval(poll), resolve()), 5);
      });
      const errorsBefore = await metricValue('policy_logging_error_count', { reason: 'invalid_config' });
      const run = runNetpol({ manifests: [file], flows, onRecord: (r) => records.push(r), onReload: () => (reloads++, reloaded()) });
      let t = 0;
      const send = () => flows.write(JSON.stringify({ time: new Date(Date.UTC(2024, 0, 1, 0, 0, t++ * 10)).toISOString(), src_ip: IP.client, src_port: 40000 + t, dest_ip: IP.web, dest_port: 8080, protocol: 'tcp' }) + '\n');

      send();
      await written(1);
      let next = waitReload();
      writeFileSync(file, `${BASE_CLUSTER}\n---\n${denyWeb}${loggingYaml(on, on)}`);
      await next;
      send();
      send(); // the second closes the first deny's window (10 s later)
      await written(2);
      next = waitReload();
      writeFileSync(file, `${BASE_CLUSTER}\n---\n${denyWeb}${loggingYaml(on, { log: false, delegate: true })}`);
      await next;
      send(); // NetworkLogging now invalid: the last valid setting (deny logged) still holds
      next = waitReload();
      writeFileSync(file, `${BASE_CLUSTER.replace('app: client, team: a', 'app: client, team: b')}\n---\n${allowWeb.replace('namespaceSelector: {}', 'namespaceSelector: {}, podSelector: {matchLabels: {team: a}}')}${loggingYaml(on, on)}`);
      await next;
      send(); // the client's label changed: no longer allowed
      flows.end();
      await run;
      assert.deepEqual(records.map((r) => r.disposition), ['allow', 'deny', 'deny', 'deny', 'deny']);
      assert.ok(reloads >= 3);
      assert.equal((await metricValue('policy_logging_error_count', { reason: 'invalid_config' })) - errorsBefore, 1);
    } finally {
      clearInterval(keepAlive);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('an invalid NetworkLogging at start is an error with the controller message', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'netpol-logging-'));
    try {
      writeFileSync(join(dir, 'm.yaml'), loggingYaml({ log: true, delegate: false }, { log: false, delegate: true }));
      await assert.rejects(runNetpol({ manifests: [dir], flows: new PassThrough(), watch: false }), (err: NetpolError) => err.code === 'INVALID_LOGGING' && err.message === 'cluster deny log action is invalid: delegate cannot be true when log is false');
      const loaded = await loadManifests([dir]);
      assert.ok(loaded.loggingError);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
