import assert from 'node:assert/strict';
import { execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { ADMIN, spawnServe } from '../helpers/store.ts';

const execFileAsync = promisify(execFile);
const bin = join(import.meta.dirname, '../../bin/custos.js');
const seeds = join(import.meta.dirname, '../fixtures/seeds');

/** Runs the real binary; resolves with its exit code and output whatever the code. */
async function custos(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [bin, ...args], { env: { ...process.env, ...env }, maxBuffer: 64 * 1024 * 1024 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('the store through the custos CLI', () => {
  let dataDir: string;
  let server: ChildProcess;
  let url: string;
  const env = () => ({ CUSTOS_TOKEN: ADMIN, CUSTOS_SERVER: url });

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'custos-cli-'));
    ({ child: server, url } = await spawnServe(dataDir));
  });
  after(async () => {
    if (server.exitCode === null) {
      server.kill('SIGTERM');
      await new Promise((r) => server.once('exit', r));
    }
    await rm(dataDir, { recursive: true, force: true });
  });

  it('ingests NDJSON, naming the bad line of the file and keeping the batches already stored', async () => {
    const now = Date.now();
    const { readFileSync } = await import('node:fs');
    const record = (name: string) => JSON.parse(readFileSync(join(seeds, name), 'utf8')) as Record<string, unknown>;
    const lines = [
      { logName: 'projects/demo/logs/policy-action', timestamp: new Date(now - 60_000).toISOString(), resource: { type: 'k8s_node', labels: { project_id: 'demo', location: 'local', cluster_name: 'c1', node_name: 'n1' } }, jsonPayload: record('policy-action-deny.json') },
      { logName: 'projects/demo/logs/policy-action', timestamp: new Date(now - 50_000).toISOString(), resource: { type: 'k8s_node', labels: { project_id: 'demo', location: 'local', cluster_name: 'c1', node_name: 'n1' } }, jsonPayload: record('policy-action-allow.json') },
      { logName: 'projects/demo/logs/data-proxy-audit', timestamp: new Date(now - 40_000).toISOString(), jsonPayload: record('data-proxy-user-authentication.json') },
    ];
    const good = join(dataDir, 'good.ndjson');
    await writeFile(good, lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
    const ok = await custos(['ingest', good], env());
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stderr, /3 stored/);

    const bad = join(dataDir, 'bad.ndjson');
    await writeFile(bad, [JSON.stringify({ ...lines[0], insertId: 'x1' }), '{"logName": "projects/demo/logs/app", "severity": "LOUD", "textPayload": "x"}'].join('\n') + '\n');
    const rejected = await custos(['ingest', bad], env());
    assert.equal(rejected.code, 1);
    assert.match(rejected.stderr, /bad\.ndjson:2: severity: /);
  });

  it('reads with the seed\'s queries, as a table and as JSON', async () => {
    const denies = await custos(['read', 'resource.type="k8s_node" logName="projects/demo/logs/policy-action" jsonPayload.disposition="deny"', '--format', 'json'], env());
    assert.equal(denies.code, 0, denies.stderr);
    const entries = JSON.parse(denies.stdout) as { jsonPayload: { count: number } }[];
    assert.equal(entries.length, 1);
    assert.equal(entries[0]!.jsonPayload.count, 3);
    const table = await custos(['read', 'categories="userLogin"', '--format', 'table'], env());
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /^TIMESTAMP\s+SEVERITY\s+LOG/);
    assert.match(table.stdout, /user\.authentication SUCCESS/);
  });

  it('explains the OR-binds-tighter trap', async () => {
    const explained = await custos(['read', '--explain', 'severity=ERROR AND jsonPayload.b="2" OR jsonPayload.c="3"']);
    assert.equal(explained.code, 0, explained.stderr);
    assert.match(explained.stdout, /AND \(/);
  });

  it('refuses a bad filter with its position, and an unknown token', async () => {
    const bad = await custos(['read', 'jsonPayload.x = ("a" OR'], env());
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /line 1, column \d+|1:\d+/);
    const unauth = await custos(['read', ''], { ...env(), CUSTOS_TOKEN: 'cst_wrong' });
    assert.equal(unauth.code, 1);
    assert.match(unauth.stderr, /401/);
  });

  it('verifies, reindexes and reads the data directory offline once the server is stopped', async () => {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
    const verified = await custos(['verify', '--data', dataDir]);
    assert.equal(verified.code, 0, verified.stdout + verified.stderr);
    const reindexed = await custos(['reindex', '--data', dataDir]);
    assert.equal(reindexed.code, 0, reindexed.stderr);
    assert.match(reindexed.stderr, /reindex: 3 entries indexed/);
    const offline = await custos(['read', 'jsonPayload.disposition="allow"', '--data', dataDir, '--format', 'ndjson']);
    assert.equal(offline.code, 0, offline.stderr);
    assert.equal(offline.stdout.trim().split('\n').length, 1);
  });
});
