/**
 * `custos egress` side by side with Squid, tinyproxy and HAProxy (TCP mode) on loopback, in one run:
 *   1. bulk throughput through one tunnel (HAProxy in TCP mode is the raw-forwarding reference),
 *   2. new tunnels per second (CONNECT + a small request and reply) with 64 concurrent clients,
 *   3. added latency p50/p99 at 500 tunnels/s (open loop), against the same exchange straight to the origin,
 *      interleaved with it; each the median of rounds over all peers.
 * Each round takes the peers in a rotated order, so none always runs right after another's backlog. The latency
 * measure also runs a "CONNECT floor": no proxy, the origin itself answers the CONNECT with 200 and then the
 * request, so its added latency is what the CONNECT round trip alone costs the client (HAProxy in TCP mode has none).
 * Every proxy runs as its own process with a config written to a temp dir; the origin is a separate process.
 * Bounded: fixed byte counts and durations.
 *
 *   node --import tsx bench/egress-proxies.ts [--quick] [--only bulk,tunnels,latency]
 *
 * `--only` runs some of the three measures (the others print as –).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { custosArgs } from '../test/helpers/bin.ts';

const quick = process.argv.includes('--quick');
const onlyAt = process.argv.indexOf('--only');
const MEASURES = new Set(onlyAt >= 0 ? (process.argv[onlyAt + 1] ?? '').split(',') : ['bulk', 'tunnels', 'latency']);
for (const measure of MEASURES) if (!['bulk', 'tunnels', 'latency'].includes(measure)) throw new Error(`--only: unknown measure ${JSON.stringify(measure)} (bulk, tunnels, latency)`);
const BULK_BYTES = (quick ? 256 : 1024) * 1024 * 1024;
const ROUNDS = 3;
const TUNNEL_SECONDS = quick ? 1 : 3;
const CONCURRENCY = 64;
const LATENCY_RATE = 500;
const LATENCY_COUNT = quick ? 1000 : 2500;
const CREDENTIALS = Buffer.from('bench:bench').toString('base64');

interface Peer {
  name: string;
  port: number;
  /** HAProxy forwards TCP to one fixed origin: no CONNECT. */
  connect: boolean;
  child: ChildProcess;
}

const dir = mkdtempSync(join(tmpdir(), 'custos-egress-bench-'));
chmodSync(dir, 0o777); // squid and tinyproxy drop privileges and write their logs here
const children: ChildProcess[] = [];

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, what: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}`);
    const open = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      }).on('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} did not open port ${port}`);
}

function start(command: string, args: string[]): ChildProcess {
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
  child.on('exit', (code) => {
    if (code && code !== 0 && !stopping) process.stderr.write(`${command} exited ${code}: ${stderr}\n`);
  });
  children.push(child);
  return child;
}

const ORIGIN = `
const net = require('net');
const chunk = Buffer.alloc(256 * 1024, 97);
const bulk = net.createServer((s) => {
  s.on('error', () => {});
  s.once('data', (d) => {
    const want = Number(d.toString().trim());
    let sent = 0;
    const pump = () => {
      while (sent < want) {
        sent += chunk.length;
        if (!s.write(chunk)) return s.once('drain', pump);
      }
      s.end();
    };
    pump();
  });
});
const reply = net.createServer((s) => {
  s.on('error', () => {});
  s.once('data', () => s.end('HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok'));
});
const floor = net.createServer((s) => {
  s.on('error', () => {});
  s.once('data', () => {
    s.write('HTTP/1.1 200 Connection Established\\r\\n\\r\\n');
    s.once('data', () => s.end('HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok'));
  });
});
bulk.listen(0, '127.0.0.1', () => reply.listen(0, '127.0.0.1', () => floor.listen(0, '127.0.0.1', () =>
  process.stdout.write(JSON.stringify({ bulk: bulk.address().port, reply: reply.address().port, floor: floor.address().port }) + '\\n'))));
`;

interface Origin {
  bulk: number;
  reply: number;
  /** Answers a CONNECT itself (the "CONNECT floor" pseudo-peer). */
  floor: number;
  child: ChildProcess;
}

async function startOrigin(): Promise<Origin> {
  const child = spawn(process.execPath, ['-e', ORIGIN], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const ports = await new Promise<Omit<Origin, 'child'>>((resolve) => child.stdout!.once('data', (d: Buffer) => resolve(JSON.parse(d.toString()) as Omit<Origin, 'child'>)));
  return { ...ports, child };
}

async function startCustos(origin: Origin): Promise<Peer> {
  const port = await freePort();
  const config = join(dir, 'custos.yaml');
  writeFileSync(
    config,
    [
      `listen: 127.0.0.1:${port}`,
      'policies:',
      `  - { id: ri.egress.policy.bench, type: direct, allow: [ { cidr: 127.0.0.1/32, ports: [${origin.bulk}, ${origin.reply}] } ] }`,
      'sources:',
      '  - { id: ri.source.bench, credentials: { username: bench, password: bench }, policies: [ri.egress.policy.bench] }',
      'limits: { max_connections_per_source: 100000 }',
    ].join('\n') + '\n',
  );
  // Records are written to a file, as in production: their cost is part of what is measured.
  const child = start(process.execPath, custosArgs('egress', '--config', config, '--log-file', join(dir, 'custos-records.ndjson')));
  await waitForPort(port, 'custos egress', child);
  return { name: 'custos egress', port, connect: true, child };
}

async function startSquid(): Promise<Peer> {
  const port = await freePort();
  const config = join(dir, 'squid.conf');
  writeFileSync(
    config,
    [
      `http_port 127.0.0.1:${port}`,
      'http_access allow all',
      'cache deny all',
      'cache_mem 8 MB',
      `pid_filename ${dir}/squid.pid`,
      `cache_log ${dir}/squid-cache.log`,
      `access_log stdio:${dir}/squid-access.log`,
      `coredump_dir ${dir}`,
      'shutdown_lifetime 0 seconds',
      'max_filedescriptors 65536',
    ].join('\n') + '\n',
  );
  const child = start('squid', ['-N', '-f', config]);
  await waitForPort(port, 'squid', child);
  return { name: 'squid', port, connect: true, child };
}

async function startTinyproxy(): Promise<Peer> {
  const port = await freePort();
  const config = join(dir, 'tinyproxy.conf');
  writeFileSync(
    config,
    [`Port ${port}`, 'Listen 127.0.0.1', 'Timeout 600', 'MaxClients 1024', `LogFile "${dir}/tinyproxy.log"`, 'LogLevel Info', 'Allow 127.0.0.1', 'User nobody', 'Group nogroup'].join('\n') + '\n',
  );
  const child = start('tinyproxy', ['-d', '-c', config]);
  await waitForPort(port, 'tinyproxy', child);
  return { name: 'tinyproxy', port, connect: true, child };
}

async function startHaproxy(backendPort: number, name: string): Promise<Peer> {
  const port = await freePort();
  const config = join(dir, `haproxy-${backendPort}.cfg`);
  writeFileSync(
    config,
    [
      'global',
      '  maxconn 4096',
      'defaults',
      '  mode tcp',
      '  timeout connect 5s',
      '  timeout client 60s',
      '  timeout server 60s',
      'frontend bench',
      `  bind 127.0.0.1:${port}`,
      '  default_backend origin',
      'backend origin',
      `  server origin 127.0.0.1:${backendPort}`,
    ].join('\n') + '\n',
  );
  const child = start('haproxy', ['-db', '-f', config]);
  await waitForPort(port, 'haproxy', child);
  return { name, port, connect: false, child };
}

/** Opens a connection through the peer to the origin port; resolves with the socket ready for payload. */
function openTunnel(peer: Peer | undefined, originPort: number): Promise<import('node:net').Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port: peer ? peer.port : originPort, host: '127.0.0.1', noDelay: true });
    socket.once('error', reject);
    if (!peer || !peer.connect) {
      socket.once('connect', () => resolve(socket));
      return;
    }
    socket.once('connect', () => {
      socket.write(`CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\nProxy-Authorization: Basic ${CREDENTIALS}\r\n\r\n`);
    });
    let head = '';
    const onData = (chunk: Buffer): void => {
      head += chunk.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.off('data', onData);
      if (!/^HTTP\/1\.[01] 200/.test(head)) {
        socket.destroy();
        reject(new Error(`${peer.name}: ${head.split('\r\n')[0]}`));
        return;
      }
      socket.pause();
      if (end + 4 < head.length) socket.unshift(Buffer.from(head.slice(end + 4), 'latin1'));
      resolve(socket);
    };
    socket.on('data', onData);
  });
}

async function bulkOnce(peer: Peer, originPort: number): Promise<number> {
  const socket = await openTunnel(peer, originPort);
  const started = process.hrtime.bigint();
  let received = 0;
  await new Promise<void>((resolve, reject) => {
    socket.on('data', (c: Buffer) => (received += c.length));
    socket.on('end', () => resolve());
    socket.on('error', reject);
    socket.resume();
    socket.write(`${BULK_BYTES}\n`);
  });
  socket.destroy();
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (received < BULK_BYTES) throw new Error(`${peer.name}: bulk received ${received} of ${BULK_BYTES}`);
  return received / seconds / 1e6;
}

/** One tunnel: open (CONNECT), send a small request, read the reply to the end. Resolves with its latency in ms. */
async function tunnelOnce(peer: Peer | undefined, originPort: number): Promise<number> {
  const started = process.hrtime.bigint();
  const socket = await openTunnel(peer, originPort);
  await new Promise<void>((resolve, reject) => {
    let got = 0;
    socket.on('data', (c: Buffer) => (got += c.length));
    socket.on('end', () => (got > 0 ? resolve() : reject(new Error('empty reply'))));
    socket.on('error', reject);
    socket.resume();
    socket.write('GET / HTTP/1.1\r\nHost: origin\r\n\r\n');
  });
  socket.destroy();
  return Number(process.hrtime.bigint() - started) / 1e6;
}

/** CPU time (user + system, all threads) a process has used, in ms: a cost that contention does not inflate much. */
function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // utime + stime, in USER_HZ (100 on Linux)
}

async function tunnelsPerSecond(peer: Peer, originPort: number, seconds: number): Promise<{ rate: number; errors: number; cpuUsPerTunnel: number }> {
  const deadline = Date.now() + seconds * 1000;
  const cpuBefore = cpuMs(peer.child.pid!);
  let done = 0;
  let errors = 0;
  const worker = async (): Promise<void> => {
    while (Date.now() < deadline) {
      try {
        await tunnelOnce(peer, originPort);
        done++;
      } catch {
        errors++;
      }
    }
  };
  const started = Date.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return { rate: done / ((Date.now() - started) / 1000), errors, cpuUsPerTunnel: ((cpuMs(peer.child.pid!) - cpuBefore) * 1000) / Math.max(1, done) };
}

interface Percentiles {
  p50: number;
  p99: number;
}

function percentiles(latencies: number[]): Percentiles {
  latencies.sort((a, b) => a - b);
  const at = (q: number): number => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]!;
  return { p50: at(0.5), p99: at(0.99) };
}

/**
 * Tunnels through the peer at LATENCY_RATE in open loop, interleaved half an interval apart with the same exchange
 * straight to the origin at the same rate, so both see the same moments of a shared machine (a direct run taken
 * before or after drifts with other load, and its p99 with it).
 */
async function latencyAtRate(peer: Peer, originPort: number): Promise<Percentiles & { errors: number; direct: Percentiles }> {
  const proxied: number[] = [];
  const direct: number[] = [];
  let errors = 0;
  const interval = 1000 / LATENCY_RATE;
  const started = performance.now();
  const pending: Promise<void>[] = [];
  const launch = async (due: number, via: Peer | undefined, into: number[]): Promise<void> => {
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    pending.push(tunnelOnce(via, originPort).then((ms) => void into.push(ms), () => void errors++));
  };
  for (let i = 0; i < LATENCY_COUNT; i++) {
    await launch(started + i * interval, peer, proxied);
    await launch(started + (i + 0.5) * interval, undefined, direct);
  }
  await Promise.all(pending);
  return { ...percentiles(proxied), errors, direct: percentiles(direct) };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
/** The peers in round `round`'s order: rotated, so no proxy always runs first (right after another's backlog). */
const rotated = <T>(items: T[], round: number): T[] => items.map((_, i) => items[(i + round) % items.length]!);
let stopping = false;

async function main(): Promise<void> {
  for (const tool of ['squid', 'tinyproxy', 'haproxy']) {
    if (spawnSync('which', [tool]).status !== 0) throw new Error(`${tool} is not installed (apt-get install -y squid tinyproxy haproxy)`);
  }
  const origin = await startOrigin();
  const custos = await startCustos(origin);
  const squid = await startSquid();
  const tinyproxy = await startTinyproxy();
  const haproxyBulk = await startHaproxy(origin.bulk, 'haproxy (TCP mode)');
  const haproxyReply = await startHaproxy(origin.reply, 'haproxy (TCP mode)');
  const peers = [custos, squid, tinyproxy];
  const connectFloor: Peer = { name: 'CONNECT floor (no proxy)', port: origin.floor, connect: true, child: origin.child };

  // Peers are measured in interleaved rounds and the median kept, so load drifting on a shared machine hits all alike.
  const bulkRuns: Record<string, number[]> = {};
  if (MEASURES.has('bulk')) process.stderr.write('bulk throughput…\n');
  for (let round = 0; round < (MEASURES.has('bulk') ? ROUNDS : 0); round++) {
    for (const peer of rotated([...peers, haproxyBulk], round)) (bulkRuns[peer.name] ??= []).push(await bulkOnce(peer, origin.bulk));
  }
  const bulk = Object.fromEntries(Object.entries(bulkRuns).map(([name, runs]) => [name, median(runs)]));

  // warm-up, also for the latency runs
  for (const peer of [...peers, haproxyReply]) await tunnelsPerSecond(peer, origin.reply, 1).catch(() => undefined);
  const tunnelRuns: Record<string, { rate: number; errors: number; cpuUsPerTunnel: number }[]> = {};
  if (MEASURES.has('tunnels')) process.stderr.write('tunnels per second…\n');
  for (let round = 0; round < (MEASURES.has('tunnels') ? ROUNDS : 0); round++) {
    for (const peer of rotated([...peers, haproxyReply], round)) (tunnelRuns[peer.name] ??= []).push(await tunnelsPerSecond(peer, origin.reply, TUNNEL_SECONDS));
  }
  const tunnels = Object.fromEntries(
    Object.entries(tunnelRuns).map(([name, runs]) => [
      name,
      { rate: median(runs.map((r) => r.rate)), cpu: median(runs.map((r) => r.cpuUsPerTunnel)), errors: runs.reduce((n, r) => n + r.errors, 0) },
    ]),
  );

  /** Added latency (through the peer minus straight to the origin, within a round), and the direct exchange's own. */
  const latency: Record<string, { added: Percentiles; direct: Percentiles; errors: number }> = {};
  if (MEASURES.has('latency')) {
    // Rounds over all peers, each figure the median of its rounds: one p99 of 2,500 tunnels moves with every stall of
    // the shared machine, on the client's side as much as the proxy's.
    process.stderr.write('latency at 500 tunnels/s…\n');
    const rounds: Record<string, (Percentiles & { errors: number; direct: Percentiles })[]> = {};
    for (let round = 0; round < ROUNDS; round++) {
      for (const peer of rotated([...peers, haproxyReply, connectFloor], round)) (rounds[peer.name] ??= []).push(await latencyAtRate(peer, origin.reply));
    }
    for (const [name, runs] of Object.entries(rounds)) {
      latency[name] = {
        added: { p50: median(runs.map((r) => r.p50 - r.direct.p50)), p99: median(runs.map((r) => r.p99 - r.direct.p99)) },
        direct: { p50: median(runs.map((r) => r.direct.p50)), p99: median(runs.map((r) => r.direct.p99)) },
        errors: runs.reduce((n, r) => n + r.errors, 0),
      };
      const added = runs.map((r) => `${(r.p50 - r.direct.p50).toFixed(2)} / ${(r.p99 - r.direct.p99).toFixed(2)}`).join(', ');
      process.stderr.write(`  ${name}: added p50 / p99 by round ${added} ms\n`);
    }
  }

  const ours = 'custos egress';
  /** A figure, or – where its measure was not run (`--only`). */
  const shown = (value: number | undefined, digits: number): string => (value === undefined || !Number.isFinite(value) ? '–' : value.toFixed(digits));
  const lines = [
    `| proxy | bulk MB/s (1 tunnel, ${BULK_BYTES / 1024 / 1024} MiB, median of ${ROUNDS}) | tunnels/s (${CONCURRENCY} clients, median of ${ROUNDS} × ${TUNNEL_SECONDS}s) | proxy CPU µs per tunnel | added latency p50 / p99 at ${LATENCY_RATE}/s (ms, medians over ${ROUNDS} rounds of ${LATENCY_COUNT} of each round's figure) |`,
    '| --- | ---: | ---: | ---: | ---: |',
  ];
  for (const name of [ours, 'squid', 'tinyproxy', 'haproxy (TCP mode)', connectFloor.name]) {
    const l = latency[name];
    const errors = (tunnels[name]?.errors ?? 0) + (l?.errors ?? 0);
    const added = l ? `${l.added.p50.toFixed(2)} / ${l.added.p99.toFixed(2)} (direct ${l.direct.p50.toFixed(2)} / ${l.direct.p99.toFixed(2)})` : '–';
    lines.push(`| ${name} | ${shown(bulk[name], 0)} | ${shown(tunnels[name]?.rate, 0)} | ${shown(tunnels[name]?.cpu, 0)} | ${added}${errors ? `, ${errors} errors` : ''} |`);
  }
  const ratio = (a: number | undefined, b: number | undefined): string => shown(a === undefined || b === undefined ? undefined : a / b, 2);
  const oursLatency = latency[ours];
  lines.push('');
  lines.push(
    `Ratios: bulk custos/haproxy ${ratio(bulk[ours], bulk['haproxy (TCP mode)'])} (target ≥ 0.80); ` +
      `tunnels/s custos/squid ${ratio(tunnels[ours]?.rate, tunnels['squid']?.rate)}, custos/tinyproxy ${ratio(tunnels[ours]?.rate, tunnels['tinyproxy']?.rate)} (target > 1); ` +
      `CPU per tunnel custos/squid ${ratio(tunnels[ours]?.cpu, tunnels['squid']?.cpu)}; ` +
      `added p99 ${shown(oursLatency?.added.p99, 2)} ms (target ≤ 1 ms; the CONNECT round trip alone: ${shown(latency[connectFloor.name]?.added.p99, 2)} ms).`,
  );
  process.stdout.write(`${lines.join('\n')}\n`);
}

try {
  await main();
} finally {
  stopping = true;
  for (const child of children) child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
}
