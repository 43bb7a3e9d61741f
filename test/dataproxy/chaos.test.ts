/**
 * Clients that vanish at every stage of a session (before the startup packet, during authentication, in the middle
 * of a query, inside a transaction, halfway through a large result) must not leave anything behind: every upstream
 * PostgreSQL backend the proxy opened for them goes away, and the proxy goes on serving.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import pg from 'pg';
import { startupPacket } from '../../src/dataproxy/wire.ts';
import { ADMIN_URL, createDatabase, psql, SEED_POLICY, startTestProxy, type TestProxy } from './helpers.ts';

let db: Awaited<ReturnType<typeof createDatabase>>;
let p: TestProxy;

before(async () => {
  db = await createDatabase('dp_chaos');
  p = await startTestProxy(db.url, { policies: [SEED_POLICY] });
});
after(async () => {
  await p.stop();
  await db.drop();
});

async function backends(): Promise<number> {
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  try {
    const { rows } = await admin.query<{ n: string }>('select count(*) as n from pg_stat_activity where datname = $1', [db.name]);
    return Number(rows[0]!.n);
  } finally {
    await admin.end();
  }
}

function rawSocket(): Promise<Socket> {
  return new Promise((resolve) => {
    const socket = connect(p.proxy.port, '127.0.0.1', () => resolve(socket));
    socket.on('error', () => {});
  });
}

/** A node-postgres client through the proxy, and a way to cut its connection without a Terminate message. */
async function session(): Promise<{ client: pg.Client; cut: () => void }> {
  const client = new pg.Client({ connectionString: p.conn() });
  client.on('error', () => {});
  await client.connect();
  const stream = (client as unknown as { connection: { stream: Socket } }).connection.stream;
  return { client, cut: () => stream.destroy() };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Every upstream backend the proxy opened for the test's clients goes away (within 15 s), and the proxy serves. */
async function assertBackToBaseline(baseline: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  let now = await backends();
  while (now > baseline && Date.now() < deadline) {
    await sleep(200);
    now = await backends();
  }
  assert.equal(now, baseline, `upstream backends back to ${baseline} (still ${now})`);
  assert.match(await psql(p.conn(), 'select count(*) from library.authors'), /^\d+$/);
}

/** A session whose connection is cut `afterMs` into a query it has not finished. */
async function cutDuring(sql: string, afterMs: number): Promise<void> {
  const { client, cut } = await session();
  void client.query(sql).catch(() => undefined);
  await sleep(afterMs);
  cut();
}

test('60 clients cut off at every stage leave no upstream backend behind, and the proxy goes on serving', async () => {
  const baseline = await backends();
  const stages = [
    async () => (await rawSocket()).destroy(),
    async () => {
      const socket = await rawSocket();
      socket.write(startupPacket({ user: 'proxy-user', database: 'acmedb' }));
      await sleep(5);
      socket.destroy();
    },
    () => cutDuring('select pg_sleep(0.3)', 20),
    async () => {
      const { client, cut } = await session();
      await client.query('begin');
      await client.query('select * from library.authors');
      cut();
    },
    () => cutDuring("select g, repeat('x', 200) from generate_series(1, 200000) g", 30),
    async () => {
      const { client } = await session();
      await client.query('select * from library.authors');
      await client.end();
    },
  ];
  await Promise.all(Array.from({ length: 60 }, (_, i) => stages[i % stages.length]!()));
  await assertBackToBaseline(baseline);
});

/** xorshift32: the same garbage in every run, so a failure can be replayed. */
function random(seed: number): () => number {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

test('garbage from authenticated clients (random bytes, and well-framed messages with random bodies) never takes the proxy down', async () => {
  const baseline = await backends();
  const next = random(0x5eed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
  const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => Math.floor(next() * 256)));
  const texts = ['select 1', 'select * from library.authors', "select firstname from library.authors where id = 1", 'select \x00', '\xff\xfe', ''];
  const framed = (): Buffer => {
    const type = pick(['Q', 'P', 'B', 'D', 'E', 'S', 'F', 'C', 'H', 'd', 'c', 'f', 'X', 'p', '?']);
    const body = next() < 0.5 ? Buffer.concat([Buffer.from(pick(texts)), Buffer.from([0]), bytes(Math.floor(next() * 12))]) : bytes(Math.floor(next() * 40));
    const out = Buffer.alloc(5 + body.length);
    out.write(type, 0, 'latin1');
    out.writeInt32BE(body.length + 4, 1);
    body.copy(out, 5);
    return out;
  };
  for (let round = 0; round < 4; round++) {
    await Promise.all(Array.from({ length: 10 }, async () => {
      const { client, cut } = await session();
      const stream = (client as unknown as { connection: { stream: Socket } }).connection.stream;
      const messages = Array.from({ length: 20 }, () => (next() < 0.2 ? bytes(1 + Math.floor(next() * 16)) : framed()));
      for (const m of messages) {
        if (stream.destroyed) break;
        stream.write(m);
        await sleep(1);
      }
      await sleep(20);
      cut();
    }));
  }
  await assertBackToBaseline(baseline);
});
