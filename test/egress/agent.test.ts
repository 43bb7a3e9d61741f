import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { after, before, test } from 'node:test';
import { registry } from '../../src/telemetry/index.ts';
import { auth, curl, spawnCli, startHttpOrigin, startProxy, waitFor, type Origin, type RunningProxy } from './helpers.ts';

// Agent proxy with two real `custos egress agent` processes; one is killed mid-test and traffic fails over.

const POLICY = 'ri.egress.policy.onprem';
let origin: Origin;
let run: RunningProxy;
const agents: { id: string; child: ChildProcess; address: string }[] = [];

before(async () => {
  origin = await startHttpOrigin();
  for (const id of ['agent-1', 'agent-2']) {
    const { child, listening } = await spawnCli(['egress', 'agent', '--listen', '127.0.0.1:0', '--id', id]);
    assert.match(listening, /^127\.0\.0\.1:\d+$/, `agent ${id} printed its address`);
    agents.push({ id, child, address: listening });
  }
  run = await startProxy({
    resolver: { hosts: { 'db.onprem.test': ['127.0.0.1'] } },
    agent_health: { interval_ms: 200, timeout_ms: 500 },
    policies: [
      {
        id: POLICY,
        type: 'agent-proxy',
        agents: agents.map((a) => ({ id: a.id, address: a.address })),
        allow: [{ cidr: '127.0.0.0/8', ports: [origin.port, 1] }],
      },
    ],
    sources: [{ id: 'ri.source.sales-db', credentials: { username: 'sales', password: 's3cret' }, policies: [POLICY] }],
  });
  await run.proxy.checkAgents();
});

after(async () => {
  await run.close();
  for (const a of agents) a.child.kill('SIGKILL');
  await origin.close();
});

async function through(target: string, args: string[] = []): Promise<{ status: string; record: import('../../src/model/index.ts').EgressRecord }> {
  const before = run.records.length;
  const result = await curl(['-p', '-x', `http://${auth()}@${run.http}`, ...args, target]);
  const records = await run.recordsAfter(before + 1);
  return { status: result.connectStatus === '200' ? result.status : result.connectStatus, record: records[records.length - 1]! };
}

test('agent proxy: traffic goes through both healthy agents and the record names the one used', async () => {
  const used = new Set<string>();
  for (let i = 0; i < 4; i++) {
    const seen = origin.connections.length;
    const { status, record } = await through(`http://db.onprem.test:${origin.port}/?bytes=3000`);
    assert.equal(status, '200');
    assert.equal(record.response_flags, 'success');
    assert.equal(record.metadata.network_type, 'agent proxy');
    assert.equal(record.metadata.network_policy, POLICY);
    assert.equal(record.metadata.network_resources.length, 1);
    used.add(record.metadata.network_resources[0]!);
    await waitFor(() => origin.connections.length > seen, 'the origin to see the close');
    const bytes = origin.connections[origin.connections.length - 1]!;
    assert.equal(record.request_size, bytes.read, 'request bytes equal what the origin read');
    assert.equal(record.response_size, bytes.written, 'response bytes equal what the origin wrote');
  }
  assert.deepEqual([...used].sort(), ['agent-1', 'agent-2'], 'load spreads over healthy agents');
});

test('agent proxy: handed to an agent is success even when the agent cannot reach the destination', async () => {
  const { status, record } = await through('http://127.0.0.1:1/');
  assert.equal(status, '502');
  assert.equal(record.response_flags, 'success');
  assert.equal(record.close_reason, 'agent_rejected');
  assert.match(record.failure_detail ?? '', /connect_refused/);
});

test('agent proxy: one agent killed mid-test, every request fails over to the other', async () => {
  const killed = agents[0]!;
  killed.child.kill('SIGKILL');
  await new Promise((resolve) => killed.child.once('exit', resolve));
  for (let i = 0; i < 4; i++) {
    const { status, record } = await through(`http://db.onprem.test:${origin.port}/`);
    assert.equal(status, '200', `request ${i} after the kill`);
    assert.deepEqual(record.metadata.network_resources, ['agent-2']);
  }
  await waitFor(() => run.proxy.agentHealth().find((a) => a.id === 'agent-1')?.healthy === false, 'agent-1 to be marked down');
  const exposition = await registry.metrics();
  assert.match(exposition, new RegExp(`custos_egress_agent_healthy\\{policy="${POLICY.replaceAll('.', '\\.')}",agent="agent-1"\\} 0`));
  assert.match(exposition, new RegExp(`custos_egress_agent_healthy\\{policy="${POLICY.replaceAll('.', '\\.')}",agent="agent-2"\\} 1`));
});

test('agent proxy: with every agent down the attempt fails as no_healthy_agent', async () => {
  const last = agents[1]!;
  last.child.kill('SIGKILL');
  await new Promise((resolve) => last.child.once('exit', resolve));
  await run.proxy.checkAgents();
  const { status, record } = await through(`http://db.onprem.test:${origin.port}/`);
  assert.equal(status, '502');
  assert.equal(record.response_flags, 'failed');
  assert.equal(record.failure_reason, 'no_healthy_agent');
  assert.deepEqual(record.metadata.network_resources, ['agent-1', 'agent-2']);
  assert.equal(record.metadata.network_type, 'agent proxy');
});
