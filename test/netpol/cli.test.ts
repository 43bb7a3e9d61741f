import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { PolicyActionRecord } from '../../src/model/index.ts';
import { ADMIN, startTestStore } from '../helpers/store.ts';
import { CONFORMANCE, conformanceFailures, FIXTURES, loggingYaml } from './helpers.ts';

const BIN = new URL('../../bin/custos.js', import.meta.url).pathname;

function custos(args: string[], stdin?: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, CUSTOS_TOKEN: '', CUSTOS_LOG_LEVEL: 'info' } });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject).on('close', (code) => (clearTimeout(timer), resolve({ code, stdout, stderr })));
    child.stdin.end(stdin ?? '');
  });
}

const parseRecords = (stdout: string): PolicyActionRecord[] => stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));

describe('custos netpol (the binary)', () => {
  for (const name of ['netpol_named_port_test', 'ipblockstest', 'with_end_port_example'])
    test(`conformance case ${name} through node bin/custos.js`, async () => {
      const dir = join(CONFORMANCE, name);
      const { code, stdout, stderr } = await custos(['netpol', '--manifests', join(dir, 'manifests.yaml'), '--flows', join(dir, 'flows.ndjson'), '--log-file', '-', '--no-watch']);
      assert.equal(code, 0, stderr);
      assert.deepEqual(conformanceFailures(dir, parseRecords(stdout)).slice(0, 10), []);
    });

  test('an invalid NetworkLogging stops the command with the controller message and a non-zero exit', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'netpol-cli-'));
    try {
      writeFileSync(join(dir, 'logging.yaml'), loggingYaml({ log: false, delegate: true }, { log: true, delegate: false }));
      const { code, stderr } = await custos(['netpol', '--manifests', join(dir, 'logging.yaml'), '--flows', '-']);
      assert.equal(code, 1);
      assert.match(stderr, /^custos: cluster allow log action is invalid: delegate cannot be true when log is false$/m);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('flows from stdin; a bad line is reported with its number and skipped', async () => {
    const good = JSON.stringify({ time: '2024-01-01T00:00:00Z', src_ip: '10.8.1.20', src_port: 1, dest_ip: '10.8.0.10', dest_port: 8080, protocol: 'tcp' });
    const { code, stdout, stderr } = await custos(['netpol', '--manifests', join(FIXTURES, 'cluster.yaml'), join(FIXTURES, 'hubble-policies.yaml'), '--flows', '-'], `${good}\nnot json\n`);
    assert.equal(code, 0, stderr);
    assert.equal(parseRecords(stdout).length, 1);
    assert.match(stderr, /bad flow skipped: line 2: not JSON/);
    assert.match(stderr, /2 flow lines, 1 records, 1 bad lines skipped/);
  });

  test('--log-file FOLDER writes policy_action.log, rotated as --config says', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'netpol-cli-'));
    try {
      writeFileSync(join(dir, 'config.yaml'), 'rotateBytes: 2048\nrotateKeep: 2\nrateLimitPerSecond: 0\n');
      const c = join(CONFORMANCE, 'onlineboutique');
      const { code, stderr } = await custos(['netpol', '--manifests', join(c, 'manifests.yaml'), '--flows', join(c, 'flows.ndjson'), '--log-file', `${dir}/`, '--config', join(dir, 'config.yaml'), '--no-watch']);
      assert.equal(code, 0, stderr);
      assert.ok(existsSync(join(dir, 'policy_action.log.2')) && !existsSync(join(dir, 'policy_action.log.3')));
      assert.ok(parseRecords(readFileSync(join(dir, 'policy_action.log'), 'utf8')).every((r) => r.connection && r.node_name));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a bad --config names the field', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'netpol-cli-'));
    try {
      writeFileSync(join(dir, 'config.yaml'), 'rateLimitPerSecond: -1\n');
      const { code, stderr } = await custos(['netpol', '--manifests', join(FIXTURES, 'cluster.yaml'), '--flows', '-', '--config', join(dir, 'config.yaml')]);
      assert.equal(code, 1);
      assert.match(stderr, /custos: .*config\.yaml: rateLimitPerSecond: /);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('explain names the selecting policies and the rule that allowed, or why none did', async () => {
    const c = join(CONFORMANCE, 'netpol_named_port_test', 'manifests.yaml');
    const denied = await custos(['netpol', 'explain', '--manifests', c, 'helloworld/pod-a-2784aa2559-42e06', '10.8.0.11:8050/tcp']);
    assert.equal(denied.code, 0, denied.stderr);
    assert.match(denied.stdout, /egress \(enforced at helloworld\/pod-a-2784aa2559-42e06 on node gke-custos-pool-1-a1b2\): DENIED/);
    assert.match(denied.stdout, /helloworld\/enable-ingress-from-named-port: no egress rules/);
    assert.match(denied.stdout, /ingress .*: NOT REACHED/);
    const allowed = await custos(['netpol', 'explain', '--manifests', c, '--format', 'json', '203.0.113.7', 'helloworld/new-pod-4d373f9722-ecee4:8050/tcp']);
    const explanation = JSON.parse(allowed.stdout);
    assert.equal(explanation.allowed, true);
    assert.deepEqual(explanation.records, []);
    const unknown = await custos(['netpol', 'explain', '--manifests', c, 'nosuch/pod', '10.8.0.11:80/tcp']);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /"nosuch\/pod" is neither an IP address nor a pod/);
  });

  test('--server stores each record as a policy-action LogEntry the seed queries find', async () => {
    const store = await startTestStore();
    try {
      const c = join(CONFORMANCE, 'acs-security-demos');
      const args = ['netpol', '--manifests', join(c, 'manifests.yaml'), '--flows', join(c, 'flows.ndjson'), '--no-watch', '--project', 'shop-prod', '--cluster', 'demo', '--location', 'europe-west1'];
      const local = parseRecords((await custos([...args, '--log-file', '-'])).stdout);
      const run = await custos([...args, '--server', store.server.url, '--token', ADMIN]);
      assert.equal(run.code, 0, run.stderr);
      const filter = 'resource.type="k8s_node" resource.labels.location="europe-west1" resource.labels.cluster_name="demo" logName="projects/shop-prod/logs/policy-action" jsonPayload.disposition="deny"';
      const { status, body } = await store.list(ADMIN, { filter, pageSize: 1000 });
      assert.equal(status, 200, JSON.stringify(body));
      const denies = local.filter((r) => r.disposition === 'deny');
      assert.equal(body.entries.length, denies.length);
      const first = body.entries.find((e: { jsonPayload: PolicyActionRecord }) => e.jsonPayload.timestamp === denies[0]!.timestamp && e.jsonPayload.connection.src_port === denies[0]!.connection.src_port);
      assert.deepEqual(first.jsonPayload, denies[0]);
      assert.equal(first.severity, 'WARNING');
      assert.deepEqual(first.resource, { type: 'k8s_node', labels: { project_id: 'shop-prod', location: 'europe-west1', cluster_name: 'demo', node_name: denies[0]!.node_name } });
    } finally {
      await store.close();
    }
  });
});
