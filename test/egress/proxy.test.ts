import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import type { EgressRecord } from '../../src/model/index.ts';
import { auth, curl, openTunnel, selfSignedCert, startHalfCloseOrigin, startHttpOrigin, startHttpsOrigin, startProxy, waitFor, type Origin, type RunningProxy } from './helpers.ts';

// End to end with the real curl through CONNECT (-p -x), plain HTTP forwarding (-x) and SOCKS5 (--socks5-hostname,
// --socks5) to HTTP and HTTPS origins on loopback. Loopback is refused by default, so the policy names it by CIDR,
// exactly as the sample config does.

let http: Origin;
let https: Origin;
let http6: Origin;
let halfClose: Origin;
let run: RunningProxy;
const DIRECT = 'ri.egress.policy.partner-api';
const FRONTED = 'ri.egress.policy.fronted';
const SOURCE = 'ri.source.sales-db';

before(async () => {
  const tls = await selfSignedCert(['api.partner.test']);
  [http, https, http6, halfClose] = await Promise.all([startHttpOrigin(), startHttpsOrigin(tls), startHttpOrigin('::1'), startHalfCloseOrigin()]);
  run = await startProxy({
    resolver: {
      hosts: {
        'api.partner.test': ['127.0.0.1'],
        'v6.partner.test': ['::1'],
        'meta.partner.test': ['169.254.169.254'],
        'mixed.partner.test': ['1.1.1.1', '10.1.2.3'],
        'cgnat.partner.test': ['100.64.0.7'],
        'nat64.partner.test': ['64:ff9b::a9fe:a9fe'],
      },
    },
    policies: [
      {
        id: DIRECT,
        type: 'direct',
        allow: [
          { host: 'api.partner.test', ports: [http.port, https.port] },
          { host: '*.partner.test', ports: [80] },
          { cidr: '127.0.0.1/32', ports: [http.port, https.port, halfClose.port, 1] },
          { cidr: '::1/128', ports: [`${http6.port}-${http6.port}`] },
        ],
      },
      { id: FRONTED, type: 'direct', require_sni: true, allow: [{ host: 'api.partner.test', ports: [https.port] }, { cidr: '127.0.0.1/32', ports: [https.port] }] },
    ],
    sources: [
      { id: SOURCE, credentials: { username: 'sales', password: 's3cret' }, policies: [DIRECT] },
      { id: 'ri.source.fronted', credentials: { username: 'fronted', password: 'pw' }, policies: [FRONTED] },
      { id: 'ri.source.dedicated', listen: '127.0.0.1:0', socks5: '127.0.0.1:0', policies: [DIRECT] },
    ],
  });
});

after(async () => {
  await run.close();
  await Promise.all([http, https, http6, halfClose].map((o) => o.close()));
});

async function lastRecord(before: number): Promise<EgressRecord> {
  const records = await run.recordsAfter(before + 1);
  return records[records.length - 1]!;
}

describe('allowed through each protocol', () => {
  const rows: { name: string; args: () => string[]; protocol: string; origin: () => Origin }[] = [
    { name: 'CONNECT to HTTP', args: () => ['-p', '-x', `http://${auth()}@${run.http}`, `http://api.partner.test:${http.port}/?bytes=5000`], protocol: 'connect', origin: () => http },
    { name: 'CONNECT to HTTPS', args: () => ['-k', '-x', `http://${auth()}@${run.http}`, `https://api.partner.test:${https.port}/?bytes=70000`], protocol: 'connect', origin: () => https },
    { name: 'plain HTTP forward', args: () => ['-x', `http://${auth()}@${run.http}`, `http://api.partner.test:${http.port}/?bytes=1234`], protocol: 'http', origin: () => http },
    { name: 'SOCKS5 with a host name', args: () => ['--socks5-hostname', `${auth()}@${run.socks5}`, `http://api.partner.test:${http.port}/?bytes=2000`], protocol: 'socks5', origin: () => http },
    { name: 'SOCKS5 to HTTPS', args: () => ['-k', '-x', `socks5h://${auth()}@${run.socks5}`, `https://api.partner.test:${https.port}/?bytes=3000`], protocol: 'socks5', origin: () => https },
    { name: 'SOCKS5 with an IPv6 address', args: () => ['--socks5', `${auth()}@${run.socks5}`, `http://[::1]:${http6.port}/?bytes=10`], protocol: 'socks5', origin: () => http6 },
    { name: 'CONNECT to an IPv6 literal', args: () => ['-p', '-x', `http://${auth()}@${run.http}`, `http://[::1]:${http6.port}/?bytes=10`], protocol: 'connect', origin: () => http6 },
    { name: 'CONNECT to a name with an IPv6 address', args: () => ['-p', '-x', `http://${auth()}@${run.http}`, `http://v6.partner.test:${http6.port}/`], protocol: 'connect', origin: () => http6 },
    { name: 'POST body through CONNECT', args: () => ['-p', '-x', `http://${auth()}@${run.http}`, '--data-binary', 'x'.repeat(100_000), `http://api.partner.test:${http.port}/?bytes=7`], protocol: 'connect', origin: () => http },
  ];
  for (const row of rows) {
    test(row.name, async () => {
      const before = run.records.length;
      const seen = row.origin().connections.length;
      const result = await curl(row.args());
      assert.equal(result.status, '200', result.stderr);
      const record = await lastRecord(before);
      await waitFor(() => row.origin().connections.length > seen, 'the origin to see the connection close');
      const origin = row.origin().connections[row.origin().connections.length - 1]!;
      assert.equal(record.response_flags, 'success');
      assert.equal(record.failure_reason, undefined);
      assert.equal(record.protocol, row.protocol);
      assert.equal(record.metadata.source, SOURCE);
      assert.equal(record.metadata.network_policy, DIRECT);
      assert.equal(record.metadata.network_type, 'direct');
      assert.deepEqual(record.metadata.network_resources, []);
      // Exactly what reached the origin and what it sent back, counted on the origin's own socket.
      assert.equal(record.request_size, origin.read);
      assert.equal(record.response_size, origin.written);
      assert.ok(record.duration_ms > 0, 'duration is measured');
    });
  }

  test('the record\'s byte counts equal what curl sent and received (SOCKS5, traced by curl itself)', async () => {
    const before = run.records.length;
    const dir = mkdtempSync(join(tmpdir(), 'custos-egress-trace-'));
    try {
      const trace = join(dir, 'trace.txt');
      const result = await curl(['--trace-ascii', trace, '--socks5-hostname', `${auth()}@${run.socks5}`, '--data-binary', 'z'.repeat(4321), `http://api.partner.test:${http.port}/?bytes=9876`]);
      assert.equal(result.status, '200');
      const traced = { sent: 0, received: 0 };
      for (const match of readFileSync(trace, 'utf8').matchAll(/^(=>|<=) (?:Send|Recv) (?:header|data), (\d+) bytes/gm)) {
        traced[match[1] === '=>' ? 'sent' : 'received'] += Number(match[2]);
      }
      const record = await lastRecord(before);
      assert.equal(record.request_size, traced.sent);
      assert.equal(record.response_size, traced.received);
      assert.equal(traced.sent, result.uploaded, 'curl\'s trace and its -w counters agree');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('denied, with the reason recorded', () => {
  const rows: { name: string; target: () => string; reason: string; policy: string | null; proto?: 'socks' }[] = [
    { name: 'by host', target: () => 'http://evil.test/', reason: 'no_matching_policy', policy: null },
    { name: 'by port', target: () => `http://api.partner.test:${http.port + 1 === https.port ? http.port + 2 : http.port + 1}/`, reason: 'no_matching_policy', policy: null },
    { name: 'by CIDR (127.0.0.2 is outside 127.0.0.1/32)', target: () => `http://127.0.0.2:${http.port}/`, reason: 'no_matching_policy', policy: null },
    { name: 'by CIDR through SOCKS5', target: () => `http://127.0.0.2:${http.port}/`, reason: 'no_matching_policy', policy: null, proto: 'socks' },
    { name: 'a name resolving to the metadata address', target: () => 'http://meta.partner.test/', reason: 'destination_address_refused', policy: DIRECT },
    { name: 'a name with one private address among public ones', target: () => 'http://mixed.partner.test/', reason: 'destination_address_refused', policy: DIRECT },
    { name: 'a name resolving to CGNAT', target: () => 'http://cgnat.partner.test/', reason: 'destination_address_refused', policy: DIRECT },
    { name: 'a name resolving to NAT64-embedded IPv4', target: () => 'http://nat64.partner.test/', reason: 'destination_address_refused', policy: DIRECT },
    { name: 'a name the resolver does not know', target: () => 'http://unknown.partner.test/', reason: 'dns_failure', policy: DIRECT },
    { name: 'an allowed address with nothing listening', target: () => 'http://127.0.0.1:1/', reason: 'connect_refused', policy: DIRECT },
  ];
  for (const row of rows) {
    test(row.name, async () => {
      const before = run.records.length;
      const args = row.proto === 'socks' ? ['--socks5-hostname', `${auth()}@${run.socks5}`] : ['-p', '-x', `http://${auth()}@${run.http}`];
      const result = await curl([...args, row.target()]);
      assert.notEqual(result.code, 0, 'curl must fail');
      if (row.proto !== 'socks') assert.equal(result.connectStatus, row.reason === 'dns_failure' || row.reason === 'connect_refused' ? '502' : '403');
      const record = await lastRecord(before);
      assert.equal(record.response_flags, 'failed');
      assert.equal(record.failure_reason, row.reason, record.failure_detail);
      assert.equal(record.metadata.network_policy, row.policy);
      assert.equal(record.metadata.source, SOURCE);
      assert.equal(record.request_size, 0);
      assert.equal(record.response_size, 0);
    });
  }

  test('wrong credentials get 407 and an unauthenticated record', async () => {
    const before = run.records.length;
    const result = await curl(['-x', `http://${auth('sales', 'nope')}@${run.http}`, `http://api.partner.test:${http.port}/`]);
    assert.equal(result.status, '407');
    const record = await lastRecord(before);
    assert.equal(record.failure_reason, 'unauthenticated');
    assert.equal(record.metadata.source, null);
  });

  test('SOCKS5 with wrong credentials', async () => {
    const before = run.records.length;
    const result = await curl(['--socks5-hostname', `${auth('sales', 'nope')}@${run.socks5}`, `http://api.partner.test:${http.port}/`]);
    assert.notEqual(result.code, 0);
    assert.equal((await lastRecord(before)).failure_reason, 'unauthenticated');
  });
});

test('half-close: the client ends its side and still receives the answer', async () => {
  const before = run.records.length;
  const socket = await openTunnel(run.http, `127.0.0.1:${halfClose.port}`);
  const answer = new Promise<string>((resolve) => {
    let text = '';
    socket.on('data', (c: Buffer) => (text += c.toString('latin1'))).on('end', () => resolve(text));
  });
  socket.end('hello, egress');
  assert.equal(await answer, 'sserge ,olleh');
  socket.destroy();
  const record = await lastRecord(before);
  assert.equal(record.response_flags, 'success');
  assert.equal(record.request_size, 13);
  assert.equal(record.response_size, 13);
  assert.equal(record.close_reason, 'completed');
});

describe('require_sni (domain-fronting guard)', () => {
  test('a ClientHello naming the allowed host goes through (curl)', async () => {
    const before = run.records.length;
    const result = await curl(['-k', '-x', `http://${auth('fronted', 'pw')}@${run.http}`, `https://api.partner.test:${https.port}/`]);
    assert.equal(result.status, '200', result.stderr);
    const record = await lastRecord(before);
    assert.equal(record.response_flags, 'success');
    assert.equal(record.metadata.network_policy, FRONTED);
  });

  test('a ClientHello naming another host is stopped before anything is dialled', async () => {
    const before = run.records.length;
    const seen = https.connections.length;
    const socket = await openTunnel(run.http, `api.partner.test:${https.port}`, auth('fronted', 'pw'));
    const secure = tlsConnect({ socket, servername: 'fronted.example.com', rejectUnauthorized: false });
    await new Promise<void>((resolve) => secure.once('error', () => resolve()).once('close', () => resolve()));
    const record = await lastRecord(before);
    assert.equal(record.response_flags, 'failed');
    assert.equal(record.failure_reason, 'sni_mismatch');
    assert.equal(https.connections.length, seen, 'the origin was never contacted');
  });

  test('plain HTTP forwarding cannot use a require_sni policy', async () => {
    const before = run.records.length;
    const result = await curl(['-x', `http://${auth('fronted', 'pw')}@${run.http}`, `http://api.partner.test:${https.port}/`]);
    assert.equal(result.status, '403');
    assert.equal((await lastRecord(before)).failure_reason, 'sni_missing');
  });
});

describe('a source identified by its dedicated listeners (no credentials)', () => {
  for (const kind of ['http', 'socks5'] as const) {
    test(`${kind} listener`, async () => {
      const before = run.records.length;
      const address = run.proxy.addresses()[`${kind}:ri.source.dedicated`]!;
      const args = kind === 'http' ? ['-p', '-x', `http://${address}`] : ['--socks5-hostname', address];
      const result = await curl([...args, `http://api.partner.test:${http.port}/`]);
      assert.equal(result.status, '200', result.stderr);
      const record = await lastRecord(before);
      assert.equal(record.metadata.source, 'ri.source.dedicated');
      assert.equal(record.response_flags, 'success');
    });
  }
});
