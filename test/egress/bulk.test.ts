import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { startAgent, type AgentServer } from '../../src/egress/index.ts';
import { startProxy, type RunningProxy } from './helpers.ts';

// The upstream side of a tunnel reads into buffers it reuses once the client write carrying them has completed.
// A buffer read into again too early would hand the client later bytes in place of earlier ones, so these tunnels
// carry far more than the buffer pool holds (64 MiB of random bytes, no two 64 KiB reads alike) to a client that
// keeps stopping to read (so writes stay pending and backpressure pauses the upstream), and compare checksums. One
// origin writes it at once (full 64 KiB reads, which pause the upstream on every pending write); the other trickles
// it in writes of 1–12 KiB, so the proxy reads less than the client socket's high-water mark at a time and keeps
// reading while earlier writes are still pending: the case where reusing a buffer too early would show.

const SIZE = 64 * 1024 * 1024;
const payload = randomBytes(SIZE);
const expected = createHash('sha256').update(payload).digest('hex');
const DIRECT = 'ri.egress.policy.direct';
const VIA_AGENT = 'ri.egress.policy.agent';

let origin: Server;
let originPort: number;
let trickle: Server;
let tricklePort: number;
let agent: AgentServer;
let run: RunningProxy;

before(async () => {
  // Writes the payload as soon as a connection opens: its first bytes reach the proxy before the relay is attached.
  origin = createServer((socket) => {
    socket.on('error', () => {});
    socket.end(payload);
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  originPort = (origin.address() as { port: number }).port;
  trickle = createServer((socket) => {
    socket.on('error', () => {});
    let at = 0;
    const next = (): void => {
      if (at >= SIZE) {
        socket.end();
        return;
      }
      const end = Math.min(SIZE, at + 1024 + ((at * 7919) % 11264));
      const flushed = socket.write(payload.subarray(at, end));
      at = end;
      if (flushed) setImmediate(next);
      else socket.once('drain', next);
    };
    next();
  });
  await new Promise<void>((resolve) => trickle.listen(0, '127.0.0.1', resolve));
  tricklePort = (trickle.address() as { port: number }).port;
  agent = await startAgent({ id: 'agent-bulk', listen: '127.0.0.1:0' });
  run = await startProxy({
    policies: [
      { id: DIRECT, type: 'direct', allow: [{ cidr: '127.0.0.1/32', ports: [originPort, tricklePort] }] },
      { id: VIA_AGENT, type: 'agent-proxy', agents: [{ id: agent.id, address: agent.address }], allow: [{ cidr: '127.0.0.1/32', ports: [originPort, tricklePort] }] },
    ],
    sources: [
      { id: 'ri.source.direct', credentials: { username: 'sales', password: 's3cret' }, policies: [DIRECT] },
      { id: 'ri.source.agent', credentials: { username: 'agent', password: 's3cret' }, policies: [VIA_AGENT] },
    ],
  });
  await run.proxy.checkAgents();
});

/** One teardown step, failing after 15 s with its name: a step that hangs (CI saw the file stop once after every test had passed) says which. */
async function step(name: string, work: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`teardown: ${name} did not finish in 15 s`)), 15_000)));
  try {
    await Promise.race([work, limit]);
  } finally {
    clearTimeout(timer);
  }
}

after(async () => {
  await step('the proxy closing', run.close());
  await step('the agent closing', agent.close());
  await step('the origins closing', Promise.all([origin, trickle].map((server) => new Promise<void>((resolve) => server.close(() => resolve())))));
});

/** CONNECT by hand, keeping what arrived after the proxy's answer: the origin starts sending at once. */
async function openTunnel(proxy: string, target: string, credentials: string): Promise<{ socket: Socket; rest: Buffer }> {
  const at = proxy.lastIndexOf(':');
  const socket = connect(Number(proxy.slice(at + 1)), proxy.slice(0, at));
  socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\nProxy-Authorization: Basic ${Buffer.from(credentials).toString('base64')}\r\n\r\n`);
  const received = await new Promise<Buffer>((resolve, reject) => {
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      head = Buffer.concat([head, chunk]);
      if (head.indexOf('\r\n\r\n') < 0) return;
      socket.pause().off('data', onData).off('error', reject);
      resolve(head);
    };
    socket.on('data', onData).on('error', reject);
  });
  const end = received.indexOf('\r\n\r\n');
  assert.match(received.subarray(0, end).toString('latin1'), /^HTTP\/1\.1 200 /);
  return { socket, rest: received.subarray(end + 4) };
}

/** Reads the tunnel to its end, stopping for a moment after every 2 MiB and for longer after the first 8 MiB. */
async function slowChecksum(target: string, credentials: string): Promise<{ digest: string; bytes: number }> {
  const { socket, rest } = await openTunnel(run.http, target, credentials);
  const hash = createHash('sha256').update(rest);
  let bytes = rest.length;
  let nextStop = 2 * 1024 * 1024;
  await new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
      if (bytes < nextStop) return;
      socket.pause();
      setTimeout(() => socket.resume(), nextStop === 8 * 1024 * 1024 ? 500 : 20);
      nextStop += 2 * 1024 * 1024;
    });
    socket.on('end', resolve).on('error', reject);
    socket.resume();
  });
  socket.destroy();
  return { digest: hash.digest('hex'), bytes };
}

/** 64 MiB from the origin to a slow client with these credentials, checked byte for byte; the tunnel's record. */
async function slowTransferRecord(credentials: string): Promise<(typeof run.records)[number]> {
  const before = run.records.length;
  assert.deepEqual(await slowChecksum(`127.0.0.1:${originPort}`, credentials), { digest: expected, bytes: SIZE });
  return (await run.recordsAfter(before + 1))[before]!;
}

test('64 MiB from a direct destination reach a slow client intact, and the record counts them', async () => {
  const record = await slowTransferRecord('sales:s3cret');
  assert.equal(record.response_flags, 'success');
  assert.equal(record.response_size, SIZE);
  assert.equal(record.request_size, 0);
  assert.equal(record.close_reason, 'completed');
});

test('64 MiB through an agent reach a slow client intact (both dialled sockets reuse their buffers)', async () => {
  const record = await slowTransferRecord('agent:s3cret');
  assert.equal(record.metadata.network_type, 'agent proxy');
  assert.equal(record.response_size, SIZE);
});

test('64 MiB trickled in small writes reach a slow client intact, direct and through an agent', async () => {
  for (const credentials of ['sales:s3cret', 'agent:s3cret']) {
    assert.deepEqual(await slowChecksum(`127.0.0.1:${tricklePort}`, credentials), { digest: expected, bytes: SIZE });
  }
});

test('two slow tunnels at once share the buffer pool without mixing their bytes', async () => {
  const both = await Promise.all([slowChecksum(`127.0.0.1:${tricklePort}`, 'sales:s3cret'), slowChecksum(`127.0.0.1:${originPort}`, 'agent:s3cret')]);
  for (const got of both) assert.deepEqual(got, { digest: expected, bytes: SIZE });
});
