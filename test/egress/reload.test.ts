import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { parseEgressConfig } from '../../src/egress/index.ts';
import { openTunnel, startEchoOrigin, startProxy, type Origin, type RunningProxy } from './helpers.ts';

// The proxy keeps decisions for IP-literal destinations and Proxy-Authorization values that verified, so a repeat
// connection skips both; a reload must drop them, or a destination or password the new config removed would still
// get through.

let echo: Origin;
let run: RunningProxy;
const SOURCE = 'ri.source.sales-db';

function config(allowedPort: number, password: string): Record<string, unknown> {
  return {
    policies: [{ id: 'p', type: 'direct', allow: [{ cidr: '127.0.0.1/32', ports: [allowedPort] }] }],
    sources: [{ id: SOURCE, credentials: { username: 'sales', password }, policies: ['p'] }],
  };
}

async function reload(document: Record<string, unknown>): Promise<void> {
  await run.proxy.reload(parseEgressConfig({ listen: '127.0.0.1:0', socks5: '127.0.0.1:0', ...document }, 'test config'));
}

before(async () => {
  echo = await startEchoOrigin();
  run = await startProxy(config(echo.port, 's3cret'));
});

after(async () => {
  await run.close();
  await echo.close();
});

test('a destination allowed before a reload that removed it is refused after it', async () => {
  const first = run.records.length;
  for (let i = 0; i < 2; i++) (await openTunnel(run.http, `127.0.0.1:${echo.port}`)).destroy();
  // Their records come when the tunnels have closed; the record looked at below must be the refused one's.
  await run.recordsAfter(first + 2);
  await reload(config(1, 's3cret'));
  const before = run.records.length;
  await assert.rejects(openTunnel(run.http, `127.0.0.1:${echo.port}`), /403/);
  const [record] = (await run.recordsAfter(before + 1)).slice(before);
  assert.equal(record!.failure_reason, 'no_matching_policy');
});

test('credentials that verified before a reload that changed the password are refused after it', async () => {
  await reload(config(echo.port, 's3cret'));
  (await openTunnel(run.http, `127.0.0.1:${echo.port}`)).destroy();
  await reload(config(echo.port, 'n3w'));
  await assert.rejects(openTunnel(run.http, `127.0.0.1:${echo.port}`), /407/);
  (await openTunnel(run.http, `127.0.0.1:${echo.port}`, 'sales:n3w')).destroy();
});
