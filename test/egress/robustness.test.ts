import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { EgressRecord, LogEntryInput } from '../../src/model/index.ts';
import { ADMIN, startTestStore } from '../helpers/store.ts';
import { auth, curl, openTunnel, readUntil, spawnCli, startEchoOrigin, startProxy, waitFor, type Origin, type RunningProxy } from './helpers.ts';

// Bad input must get a clear answer and a record, never a crash, and must not disturb an open tunnel.

let echo: Origin;
let run: RunningProxy;
/** A listener that never accepts: once its accept queue is full, further SYNs are dropped and dials hang. */
let blackhole: { port: number; child: ChildProcess; fillers: Socket[] };
const SOURCE = 'ri.source.sales-db';

before(async () => {
  echo = await startEchoOrigin();
  const child = spawn('python3', ['-c', 'import socket,sys,time\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(120)'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve) => child.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))));
  const fillers = [connect(port, '127.0.0.1'), connect(port, '127.0.0.1'), connect(port, '127.0.0.1')];
  for (const f of fillers) f.on('error', () => {});
  blackhole = { port, child, fillers };
  run = await startProxy({
    timeouts: { handshake_ms: 400, idle_ms: 600, connect_ms: 300 },
    limits: { max_header_bytes: 4096 },
    policies: [{ id: 'p', type: 'direct', allow: [{ cidr: '127.0.0.1/32', ports: [echo.port, port] }] }],
    sources: [
      { id: SOURCE, credentials: { username: 'sales', password: 's3cret' }, policies: ['p'] },
      { id: 'ri.source.limited', credentials: { username: 'limited', password: 'pw' }, policies: ['p'], max_connections: 1 },
    ],
  });
});

after(async () => {
  await run.close();
  await echo.close();
  for (const f of blackhole.fillers) f.destroy();
  blackhole.child.kill('SIGKILL');
});

test('a destination that never answers the SYN fails as connect_timeout (504)', async () => {
  const before = run.records.length;
  await assert.rejects(openTunnel(run.http, `127.0.0.1:${blackhole.port}`), /504 Gateway Timeout/);
  const record = await newRecord(before, (r) => r.failure_reason === 'connect_timeout');
  assert.equal(record.response_flags, 'failed');
  assert.equal(record.destination_address, '127.0.0.1');
});

function raw(address: string, bytes: string | Buffer): Promise<{ answer: string; socket: Socket }> {
  const socket = connect(Number(address.split(':')[1]), '127.0.0.1');
  socket.write(bytes);
  return readUntil(socket, () => false).then((answer) => ({ answer, socket }));
}

async function echoes(socket: Socket, text: string): Promise<void> {
  socket.write(text);
  const got = await readUntil(socket, (t) => t.length >= text.length);
  assert.equal(got, text, 'the open tunnel still relays');
}

async function newRecord(before: number, match: (r: EgressRecord) => boolean): Promise<EgressRecord> {
  await waitFor(() => run.records.slice(before).some(match), 'the expected record');
  return run.records.slice(before).find(match)!;
}

describe('bad input', () => {
  let tunnel: Socket;
  before(async () => {
    tunnel = await openTunnel(run.http, `127.0.0.1:${echo.port}`);
    tunnel.setTimeout(0);
  });
  after(() => tunnel.destroy());

  const httpRows: { name: string; bytes: () => string | Buffer; status: string; reason: string }[] = [
    { name: 'a CONNECT line without a port', bytes: () => 'CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n', status: '400', reason: 'protocol_error' },
    { name: 'a CONNECT line without a version', bytes: () => 'CONNECT 127.0.0.1:80\r\n\r\n', status: '400', reason: 'protocol_error' },
    { name: 'a CONNECT target with spaces', bytes: () => 'CONNECT a b:80 HTTP/1.1\r\n\r\n', status: '400', reason: 'protocol_error' },
    { name: 'an origin-form request (not a proxy request)', bytes: () => 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', status: '400', reason: 'protocol_error' },
    { name: 'an https:// absolute-form request', bytes: () => 'GET https://x/ HTTP/1.1\r\nHost: x\r\n\r\n', status: '501', reason: 'unsupported_request' },
    { name: 'binary garbage on the HTTP port', bytes: () => Buffer.from([0x16, 0x03, 0x01, 0, 5, 1, 2, 3]), status: '400', reason: 'protocol_error' },
    { name: 'huge headers', bytes: () => `CONNECT 127.0.0.1:1 HTTP/1.1\r\nX-Big: ${'a'.repeat(10_000)}\r\n\r\n`, status: '431', reason: 'header_too_large' },
  ];
  for (const row of httpRows) {
    test(`HTTP port: ${row.name} → ${row.status} ${row.reason}`, async () => {
      const before = run.records.length;
      const { answer } = await raw(run.http, row.bytes());
      assert.match(answer, new RegExp(`^HTTP/1\\.1 ${row.status} `));
      assert.match(answer, new RegExp(`Custos-Failure: ${row.reason}`));
      const record = await newRecord(before, (r) => r.failure_reason === row.reason);
      assert.equal(record.response_flags, 'failed');
      await echoes(tunnel, `still alive after ${row.name}`);
    });
  }

  const socksRows: { name: string; bytes: Buffer; reason: string }[] = [
    { name: 'HTTP on the SOCKS port', bytes: Buffer.from('GET / HTTP/1.1\r\n\r\n'), reason: 'protocol_error' },
    { name: 'SOCKS4 on the SOCKS port', bytes: Buffer.from([4, 1, 0, 80, 127, 0, 0, 1, 0]), reason: 'protocol_error' },
    { name: 'a greeting with zero methods', bytes: Buffer.from([5, 0]), reason: 'protocol_error' },
    { name: 'random bytes', bytes: Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x00, 0xff]), reason: 'protocol_error' },
    { name: 'no-auth only, on the shared listener', bytes: Buffer.from([5, 1, 0]), reason: 'unauthenticated' },
  ];
  for (const row of socksRows) {
    test(`SOCKS port: ${row.name} → ${row.reason}`, async () => {
      const before = run.records.length;
      await raw(run.socks5, row.bytes);
      const record = await newRecord(before, (r) => r.failure_reason === row.reason && r.protocol === 'socks5');
      assert.equal(record.response_flags, 'failed');
      await echoes(tunnel, `still alive after ${row.name}`);
    });
  }

  test('a slowloris client is cut off at the handshake deadline with 408', async () => {
    const before = run.records.length;
    const socket = connect(Number(run.http.split(':')[1]), '127.0.0.1');
    const trickle = setInterval(() => socket.write('X'), 50);
    socket.write('CONNECT 127.0.0.1:1 HTTP/1.1\r\nX-Slow: ');
    const answer = await readUntil(socket, () => false, 5000);
    clearInterval(trickle);
    socket.destroy();
    assert.match(answer, /^HTTP\/1\.1 408 /);
    await newRecord(before, (r) => r.failure_reason === 'handshake_timeout');
    await echoes(tunnel, 'still alive after slowloris');
  });

  test('a client that connects and says nothing is closed at the deadline', async () => {
    const before = run.records.length;
    await raw(run.socks5, Buffer.alloc(0));
    await newRecord(before, (r) => r.failure_reason === 'handshake_timeout' && r.protocol === 'socks5');
  });

  test('a good request still goes through after all of that', async () => {
    const result = await curl(['-sS', '-p', '-x', `http://${auth()}@${run.http}`, '--data-binary', 'ping', `telnet://127.0.0.1:${echo.port}`, '--max-time', '1']);
    assert.equal(result.connectStatus, '200');
  });
});

test('per-source connection limit: the second concurrent connection is refused with 429', async () => {
  const first = await openTunnel(run.http, `127.0.0.1:${echo.port}`, 'limited:pw');
  const before = run.records.length;
  await assert.rejects(openTunnel(run.http, `127.0.0.1:${echo.port}`, 'limited:pw'), /429 Too Many Requests/);
  const record = await newRecord(before, (r) => r.failure_reason === 'connection_limit');
  assert.equal(record.metadata.source, 'ri.source.limited');
  await echoes(first, 'the first one is fine');
  first.destroy();
  await waitFor(() => run.proxy.openConnections() === 0, 'the slot to be released');
  const again = await openTunnel(run.http, `127.0.0.1:${echo.port}`, 'limited:pw');
  again.destroy();
});

test('idle timeout closes a silent tunnel and says so in the record', async () => {
  const before = run.records.length;
  const socket = await openTunnel(run.http, `127.0.0.1:${echo.port}`);
  await echoes(socket, 'abc');
  await readUntil(socket, () => false, 5000);
  const record = await newRecord(before, (r) => r.close_reason === 'idle_timeout');
  assert.equal(record.response_flags, 'success');
  assert.equal(record.request_size, 3);
  assert.equal(record.response_size, 3);
});

describe('the egress command as a process', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'custos-egress-cli-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('a config with a bad CIDR is refused with the path of the bad value, exit 1', async () => {
    const { child, stderr } = await spawnCli(['egress', '--config', join(import.meta.dirname, '../fixtures/egress/bad_cidr.yaml')]);
    await waitFor(() => child.exitCode !== null, 'the command to exit');
    assert.equal(child.exitCode, 1);
    assert.match(stderr(), /custos: .*bad_cidr\.yaml: invalid egress config\n\s+policies\[0\]\.allow\[1\]\.cidr: must be a CIDR/);
  });

  test('--server sends LogEntries to the store; --metrics-listen serves the counters', async () => {
    const store = await startTestStore();
    const file = join(dir, 'server.yaml');
    writeFileSync(file, ['listen: 127.0.0.1:0', 'policies:', `  - { id: p, type: direct, allow: [ { cidr: 127.0.0.1/32, ports: [${echo.port}] } ] }`, 'sources:', `  - { id: ${SOURCE}, credentials: { username: sales, password: s3cret }, policies: [p] }`].join('\n'));
    const proc = await spawnCli(['egress', '--config', file, '--server', store.server.url, '--token', ADMIN, '--project', 'acme', '--metrics-listen', '127.0.0.1:0']);
    try {
      const address = /http=(\S+)/.exec(proc.stderr())![1]!;
      const metricsAddress = /metrics=(\S+)/.exec(proc.stderr())![1]!;
      const tunnel = await openTunnel(address, `127.0.0.1:${echo.port}`);
      await echoes(tunnel, 'to the store');
      tunnel.end();
      await assert.rejects(openTunnel(address, '127.0.0.1:1'), /403/);
      // The records reach the real store and come back through the seed's kind of filter.
      let entries: LogEntryInput[] = [];
      for (let tries = 0; tries < 100 && entries.length < 2; tries++) {
        await new Promise((r) => setTimeout(r, 100));
        entries = (await store.list(ADMIN, { filter: `logName="projects/acme/logs/network-egress" labels.source="${SOURCE}"` })).body.entries;
      }
      assert.equal(entries.length, 2, 'two entries in the store');
      assert.deepEqual(entries.map((e) => e.severity).sort(), ['INFO', 'WARNING']);
      assert.deepEqual(entries.map((e) => (e.jsonPayload as unknown as EgressRecord).response_flags).sort(), ['failed', 'success']);
      const exposition = await (await fetch(`http://${metricsAddress}/metrics`)).text();
      assert.match(exposition, new RegExp(`custos_egress_connections_total\\{source="${SOURCE.replaceAll('.', '\\.')}",policy="p",network_type="direct",result="success",reason="none"\\} 1`));
      assert.match(exposition, /custos_egress_connections_total\{source="ri\.source\.sales-db",policy="",network_type="direct",result="failed",reason="no_matching_policy"\} 1/);
      assert.match(exposition, /custos_egress_bytes_total\{source="ri\.source\.sales-db",policy="p",direction="request"\} 12/);
    } finally {
      proc.child.kill('SIGTERM');
      await waitFor(() => proc.child.exitCode !== null, 'the process to exit', 10_000);
      await store.close();
    }
  });

  test('reload on file change and SIGHUP keeps an open tunnel; SIGTERM drains it and the record has its bytes', async (t) => {
    const config = (ports: number[]): string =>
      [
        'listen: 127.0.0.1:0',
        'policies:',
        '  - id: p',
        '    type: direct',
        `    allow: [ { cidr: 127.0.0.1/32, ports: [${ports.join(', ')}] } ]`,
        'sources:',
        `  - { id: ${SOURCE}, credentials: { username: sales, password: s3cret }, policies: [p] }`,
        'timeouts: { drain_ms: 10000 }',
      ].join('\n');
    const file = join(dir, 'egress.yaml');
    const logFile = join(dir, 'records.ndjson');
    writeFileSync(file, config([echo.port]));
    const proc = await spawnCli(['egress', '--config', file, '--log-file', logFile]);
    // A failed assertion below must not leave the proxy running after the suite.
    t.after(() => {
      if (proc.child.exitCode === null) proc.child.kill('SIGKILL');
    });
    const address = /http=(\S+)/.exec(proc.stderr())![1]!;
    const tunnel = await openTunnel(address, `127.0.0.1:${echo.port}`);
    await echoes(tunnel, 'before reload');

    // The new config no longer allows the echo port: new connections are refused, the open tunnel is not.
    // No signal here: the file change alone triggers the reload.
    writeFileSync(file, config([1]));
    await waitFor(() => /egress config applied/.test(proc.stderr()), 'the file change to be applied');
    await assert.rejects(openTunnel(address, `127.0.0.1:${echo.port}`), /403 Forbidden/);
    await echoes(tunnel, 'after reload');

    // A broken config is rejected and the running one kept.
    writeFileSync(file, 'policies: [ { id: p, type: direct, allow: [ { cidr: 10.0.0.0/99, ports: [1] } ] } ]');
    proc.child.kill('SIGHUP');
    await waitFor(() => /config reload rejected/.test(proc.stderr()), 'the bad reload to be rejected');
    await echoes(tunnel, 'after a rejected reload');

    proc.child.kill('SIGTERM');
    await waitFor(() => /draining egress proxy/.test(proc.stderr()), 'draining to start');
    await echoes(tunnel, 'while draining');
    tunnel.end();
    await waitFor(() => proc.child.exitCode !== null, 'the drained process to exit', 10_000);
    assert.equal(proc.child.exitCode, 0);

    const entries = readFileSync(logFile, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as LogEntryInput);
    const tunnelEntry = entries.find((e) => (e.jsonPayload as unknown as EgressRecord).response_flags === 'success')!;
    const record = tunnelEntry.jsonPayload as unknown as EgressRecord;
    const sent = ['before reload', 'after reload', 'after a rejected reload', 'while draining'].join('').length;
    assert.equal(record.request_size, sent);
    assert.equal(record.response_size, sent);
    assert.equal(tunnelEntry.logName, 'projects/custos/logs/network-egress');
    assert.equal(tunnelEntry.severity, 'INFO');
    assert.deepEqual(tunnelEntry.labels, { network_type: 'direct', response_flags: 'success', source: SOURCE, network_policy: 'p' });
    assert.equal(tunnelEntry.resource?.type, 'custos_egress_proxy');
    const denied = entries.find((e) => (e.jsonPayload as unknown as EgressRecord).failure_reason === 'no_matching_policy');
    assert.equal(denied?.severity, 'WARNING');
  });
});
