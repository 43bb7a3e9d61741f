import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HttpEntrySink } from '../../src/ingest/sink.ts';
import type { PolicyActionRecord } from '../../src/model/index.ts';
import { startDemo } from '../../src/netpol/index.ts';
import { ADMIN, startTestStore } from '../helpers/store.ts';

test('the serve --demo producer writes allowed, aggregated denied, probe and cluster-external records into the store', async () => {
  const store = await startTestStore();
  const demo = await startDemo({ sink: new HttpEntrySink(store.server.url, ADMIN), project: 'demo-proj', intervalMs: 500 });
  const wanted: [string, (p: PolicyActionRecord) => boolean][] = [
    ['allowed', (p) => p.disposition === 'allow' && p.policies?.[0]?.name === 'allow-green'],
    ['aggregated ingress deny', (p) => p.disposition === 'deny' && p.count > 1 && p.connection.direction === 'ingress'],
    ['egress deny', (p) => p.disposition === 'deny' && p.connection.direction === 'egress'],
    ['probe', (p) => p.policies?.[0]?.name === '' && p.src.instance === '10.84.0.1'],
    ['cluster-external', (p) => p.dest.instance === '142.250.72.14'],
  ];
  try {
    let missing = wanted;
    // Denies are aggregated over 5 s of their own (current) time, so the first deny records land after about 5 s.
    for (let attempt = 0; attempt < 60 && missing.length; attempt++) {
      await new Promise((r) => setTimeout(r, 250));
      const { body } = await store.list(ADMIN, { filter: 'logName="projects/demo-proj/logs/policy-action" resource.type="k8s_node"', pageSize: 1000 });
      const payloads: PolicyActionRecord[] = (body.entries ?? []).map((e: { jsonPayload: PolicyActionRecord }) => e.jsonPayload);
      missing = wanted.filter(([, predicate]) => !payloads.some(predicate));
    }
    assert.deepEqual(missing.map(([what]) => what), []);
  } finally {
    await demo.stop();
    await store.close();
  }
});
