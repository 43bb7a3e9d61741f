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
  const deadline = Date.now() + 15_000;
  let now = await backends();
  while (now > baseline && Date.now() < deadline) {
    await sleep(200);
    now = await backends();
  }
  assert.equal(now, baseline, `upstream backends back to ${baseline} (still ${now})`);
  assert.match(await psql(p.conn(), 'select count(*) from library.authors'), /^\d+$/);
});
