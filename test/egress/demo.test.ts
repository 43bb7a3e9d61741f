import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startDemo } from '../../src/egress/index.ts';
import type { EgressRecord, LogEntryInput } from '../../src/model/index.ts';
import { waitFor } from './helpers.ts';

test('startDemo drives direct, agent-proxy and denied traffic into the sink as network-egress entries', async () => {
  const entries: LogEntryInput[] = [];
  const demo = await startDemo({ sink: { write: async (batch) => void entries.push(...batch), close: async () => {} }, project: 'demo', listen: '127.0.0.1:0', intervalMs: 200 });
  try {
    assert.match(demo.proxyUrl, /^http:\/\/sales:s3cret@127\.0\.0\.1:\d+$/);
    const records = (): EgressRecord[] => entries.map((e) => e.jsonPayload as unknown as EgressRecord);
    await waitFor(
      () =>
        records().some((r) => r.metadata.network_type === 'agent proxy' && r.response_flags === 'success') &&
        records().some((r) => r.metadata.network_type === 'direct' && r.response_flags === 'success') &&
        ['no_matching_policy', 'destination_address_refused', 'connect_refused'].every((reason) => records().some((r) => r.failure_reason === reason)),
      'one round of demo traffic',
      10_000,
    );
  } finally {
    await demo.stop();
  }
  assert.ok(entries.every((e) => e.logName === 'projects/demo/logs/network-egress'), 'every entry is in the network-egress log');
  const agentRecord = entries.map((e) => e.jsonPayload as unknown as EgressRecord).find((r) => r.metadata.network_type === 'agent proxy')!;
  assert.match(agentRecord.metadata.network_resources[0] ?? '', /^agent-[12]$/);
});
