/**
 * The wire protocol with real clients (psql, pgbench in its three query modes, node-postgres) against the real
 * PostgreSQL through the proxy: simple and extended query, multi-statement strings, transactions, COPY out,
 * CancelRequest, SSLRequest with and without a certificate, and error recovery in pipelines (discard until Sync).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { ScramClientExchange } from '../../src/dataproxy/scram.ts';
import {
  cancelRequestPacket, cstring, int16, int32, message, MessageReader, parseErrorFields, parseMessage, queryMessage, readRowDescriptionNames,
  startupPacket, syncMessage, type Message,
} from '../../src/dataproxy/wire.ts';
import { createDatabase, pgbench, psql, psqlError, query, SEED_POLICY, startTestProxy, type TestProxy } from './helpers.ts';

const run = promisify(execFile);
let db: Awaited<ReturnType<typeof createDatabase>>;
let p: TestProxy;

const ACCOUNTS_POLICY = {
  id: 'p-bench', name: 'accounts',
  rules: [{ id: 'a-1', name: 'tokenize filler', condition: { groups: ['analysts'] }, fields: [{ schema: 'public', table: 'pgbench_accounts', field: 'filler' }],
    transformation: { regex: { regex: '[a-z]{8}', consistent: true } } }],
  filters: [{ schema: 'public', table: 'pgbench_accounts', field: 'aid', expression: 'aid % 10 <> 0' }],
};

before(async () => {
  db = await createDatabase('dp_proto');
  await run('pgbench', ['-i', '-s', '1', '-q', db.url], { timeout: 60_000 });
});
after(async () => {
  await db.drop();
});

/** A minimal raw client: authenticates with SCRAM, then exchanges bytes so a test controls message order. */
async function rawSession(port: number, user = 'proxy-user', password = 's3cret') {
  const socket = connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const reader = new MessageReader();
  const queue: Message[] = [];
  let wake: (() => void) | undefined;
  socket.on('data', (chunk: Buffer) => {
    queue.push(...reader.push(chunk));
    wake?.();
  });
  const next = async (): Promise<Message> => {
    for (let i = 0; i < 200 && queue.length === 0; i++) await new Promise<void>((resolve) => { wake = resolve; setTimeout(resolve, 50); });
    const m = queue.shift();
    if (!m) throw new Error('no message from the proxy');
    return m;
  };
  const until = async (type: string): Promise<Message[]> => {
    const out: Message[] = [];
    for (let i = 0; i < 1000; i++) {
      const m = await next();
      out.push(m);
      if (m.type === type) return out;
    }
    throw new Error(`no '${type}'`);
  };
  socket.write(startupPacket({ user, database: 'acmedb' }));
  await next(); // AuthenticationSASL
  const scram = new ScramClientExchange(password);
  const first = Buffer.from(scram.first());
  socket.write(message('p', Buffer.concat([cstring('SCRAM-SHA-256'), int32(first.length), first])));
  const cont = await next();
  socket.write(message('p', Buffer.from(scram.final(cont.body.subarray(4).toString()))));
  const greeting = await until('Z');
  const key = greeting.find((m) => m.type === 'K')!;
  return { socket, next, until, processId: key.body.readInt32BE(0), secretKey: key.body.readInt32BE(4) };
}

const bind = (portal = '', statement = '') => message('B', Buffer.concat([cstring(portal), cstring(statement), int16(0), int16(0), int16(0)]));
const execute = (portal = '') => message('E', Buffer.concat([cstring(portal), int32(0)]));
const describePortal = (portal = '') => message('D', Buffer.concat([Buffer.from('P'), cstring(portal)]));

// Every case runs twice: with sessions on the native relay after authentication, and on Node sockets throughout
// (no relay built, TLS, the embedded upstream).
for (const relay of [true, false]) describe(`protocol through the proxy (${relay ? 'native relay' : 'Node sockets'})`, () => {
  before(async () => {
    p = await startTestProxy(db.url, { policies: [SEED_POLICY, ACCOUNTS_POLICY] }, { relay });
  });
  after(async () => {
    await p.stop();
  });

  test('limits.maxConnections counts every open session, relayed or not', async () => {
    const limited = await startTestProxy(db.url, { policies: [SEED_POLICY], limits: { maxConnections: 2, maxQueryBytes: 1_000_000 } }, { relay });
    try {
      const open = [await rawSession(limited.proxy.port), await rawSession(limited.proxy.port)];
      await assert.rejects(psql(limited.conn(), 'select 1'), 'a third session is refused');
      for (const s of open) s.socket.end();
      let answer = '';
      for (let i = 0; i < 50 && answer !== '1'; i++) answer = await psql(limited.conn(), 'select 1').catch(() => new Promise<string>((r) => setTimeout(() => r(''), 50)));
      assert.equal(answer, '1', 'a session is accepted again once the others ended');
    } finally {
      await limited.stop();
    }
  });

  test('a client that sends a large statement and Terminate, then leaves, still gets the statement run', async () => {
    const big = await startTestProxy(db.url, { policies: [SEED_POLICY], limits: { maxConnections: 10, maxQueryBytes: 16_000_000 } }, { relay });
    try {
      await query(db.url, 'create table if not exists parting_words (relay boolean, note text)');
      const s = await rawSession(big.proxy.port, 'admin', 'adminpw');
      const note = 'x'.repeat(12_000_000);
      // One write, then the socket is gone: what the proxy has not yet passed on must still reach the database.
      s.socket.end(Buffer.concat([queryMessage(`insert into parting_words values (${relay}, '${note}')`), message('X')]));
      let rows: Record<string, unknown>[] = [];
      for (let i = 0; i < 100 && rows.length === 0; i++) {
        rows = await query(db.url, 'select length(note) as n from parting_words where relay = $1', [relay]);
        if (rows.length === 0) await new Promise((r) => setTimeout(r, 50));
      }
      assert.deepEqual(rows, [{ n: note.length }]);
    } finally {
      await big.stop();
    }
  });

  test('maxQueryBytes holds for statements cached by their template: longer literals are refused', async () => {
    const limited = await startTestProxy(db.url, { policies: [SEED_POLICY], limits: { maxConnections: 10, maxQueryBytes: 2000 } }, { relay });
    try {
      const s = await rawSession(limited.proxy.port);
      s.socket.write(queryMessage("select lastname from library.authors where lastname = 'x'"));
      assert.ok((await s.until('Z')).every((m) => m.type !== 'E'));
      s.socket.write(queryMessage(`select lastname from library.authors where lastname = '${'x'.repeat(3000)}'`));
      const answer = await s.until('Z');
      const error = answer.find((m) => m.type === 'E');
      assert.ok(error, 'the longer statement is refused');
      assert.match(parseErrorFields(error.body)['M']!, /longer than 2000 bytes/);
      s.socket.end();
    } finally {
      await limited.stop();
    }
  });

  test('a malformed message length ends the session with a FATAL protocol error; other sessions and new ones go on', async () => {
    const bystander = await rawSession(p.proxy.port);
    for (const bad of [Buffer.from([0x51, 0, 0, 0, 2]), Buffer.from([0x50, 0x7f, 0xff, 0xff, 0xff]), Buffer.from([0x42, 0xff, 0xff, 0xff, 0xfe])]) {
      const s = await rawSession(p.proxy.port);
      const closed = new Promise<void>((resolve) => s.socket.once('close', () => resolve()));
      s.socket.write(bad);
      const error = await s.next();
      assert.equal(error.type, 'E');
      const fields = parseErrorFields(error.body);
      assert.equal(fields['S'], 'FATAL');
      assert.equal(fields['C'], '08P01');
      assert.match(fields['M']!, /invalid message length/);
      await closed;
    }
    bystander.socket.write(queryMessage('select 40 + 2'));
    const answer = await bystander.until('Z');
    assert.ok(answer.some((m) => m.type === 'D' && m.body.includes(Buffer.from('42'))));
    bystander.socket.end();
    assert.equal(await psql(p.conn(), 'select 1'), '1');
  });

  test('psql: simple query, multi-statement string, transactions', async () => {
    assert.equal(await psql(p.conn('admin'), 'select 1; select 2'), '1\n2');
    const out = await psql(p.conn(), 'begin; select count(*) from library.authors; commit', ['-q']);
    assert.equal(out, '5');
    const inTx = await psql(p.conn(), 'begin; select lastname from library.authors where id = 2; rollback', ['-q']);
    assert.equal(inTx, 'Turing');
  });

  test('psql: COPY … TO STDOUT of a protected table is masked and filtered', async () => {
    const out = await psql(p.conn(), 'copy library.authors (id, lastname, firstname) to stdout');
    const rows = out.split('\n').map((l) => l.split('\t'));
    assert.deepEqual(rows.map((r) => r[0]), ['1', '2', '4', '5', '6']);
    assert.ok(rows.every((r) => !['Ada', 'Alan', 'Grace', 'Edsger', 'Barbara'].includes(r[2]!)));
    const csv = await psql(p.conn(), 'copy (select lastname from library.authors order by id) to stdout with (format csv)');
    assert.equal(csv, 'Lovelace\nTuring\nHopper\nDijkstra\nLiskov');
  });

  for (const mode of ['simple', 'extended', 'prepared']) {
    test(`pgbench -S -M ${mode} as a masked user (policy on pgbench_accounts)`, async () => {
      const { stdout } = await pgbench(['-n', '-S', '-M', mode, '-c', '2', '-j', '1', '-t', '100', p.conn()]);
      assert.match(stdout, /number of transactions actually processed: 200\/200/);
      assert.match(stdout, /number of failed transactions: 0/);
    });
    test(`pgbench TPC-B -M ${mode} as an unmasked user (writes pass through)`, async () => {
      const { stdout } = await pgbench(['-n', '-M', mode, '-c', '2', '-j', '1', '-t', '20', p.conn('admin')]);
      assert.match(stdout, /number of transactions actually processed: 40\/40/);
    });
  }

  test('pgbench TPC-B as a masked user is refused (writes), without hanging', async () => {
    await assert.rejects(pgbench(['-n', '-M', 'extended', '-c', '1', '-t', '5', p.conn()]), (err: { stderr?: string }) => {
      assert.match(err.stderr ?? '', /not allowed for masked users/);
      return true;
    });
  });

  test('node-postgres extended protocol: parameters and masked rows', async () => {
    const c = new pg.Client({ connectionString: p.conn() });
    await c.connect();
    try {
      const r = await c.query('select id, lastname, salary from library.authors where id = $1 or id = $2 order by id', [2, 4]);
      assert.deepEqual(r.rows, [{ id: 2, lastname: 'Turing', salary: '61000.00' }, { id: 4, lastname: 'Hopper', salary: null }]);
      const filtered = await c.query('select count(*)::int as n from library.authors where id = $1', [3]);
      assert.equal(filtered.rows[0].n, 0);
    } finally {
      await c.end();
    }
  });

  test('a refused Parse in a pipeline: error, discard until Sync, then the next batch runs', async () => {
    const s = await rawSession(p.proxy.port);
    try {
      s.socket.write(Buffer.concat([
        parseMessage('', 'select 1', []), bind(), execute(),
        parseMessage('s1', 'select * from pg_catalog.pg_stats', []), bind('', 's1'), describePortal(), execute(), syncMessage(),
        parseMessage('', 'select lastname from library.authors where id = 1', []), bind(), describePortal(), execute(), syncMessage(),
      ]));
      const first = await s.until('Z');
      assert.deepEqual(first.map((m) => m.type), ['1', '2', 'D', 'C', 'E', 'Z']);
      const error = parseErrorFields(first[4]!.body);
      assert.equal(error['C'], '42501');
      assert.match(error['M']!, /pg_stats/);
      const second = await s.until('Z');
      assert.deepEqual(second.map((m) => m.type), ['1', '2', 'T', 'D', 'C', 'Z']);
      assert.deepEqual(readRowDescriptionNames(second[2]!.body), ['lastname']);
      assert.match(second[3]!.body.toString(), /Lovelace/);
    } finally {
      s.socket.destroy();
    }
  });

  test('a refused statement inside a transaction aborts it, as the database would', async () => {
    const s = await rawSession(p.proxy.port);
    try {
      s.socket.write(queryMessage('begin'));
      await s.until('Z');
      s.socket.write(queryMessage("select pg_read_file('/etc/passwd')"));
      const refused = await s.until('Z');
      assert.equal(parseErrorFields(refused[0]!.body)['C'], '42501');
      assert.equal(refused.at(-1)!.body.toString(), 'E');
      s.socket.write(queryMessage('select 1'));
      const aborted = await s.until('Z');
      assert.equal(parseErrorFields(aborted[0]!.body)['C'], '25P02');
      s.socket.write(queryMessage('rollback'));
      assert.equal((await s.until('Z')).at(-1)!.body.toString(), 'I');
    } finally {
      s.socket.destroy();
    }
  });

  test('a result larger than the socket buffers reaches a slow client intact (read memory is reused only when no write holds it)', async () => {
    const s = await rawSession(p.proxy.port, 'admin', 'adminpw');
    const rows = 400_000;
    // 60 MB (more than loopback's socket buffers hold) in small rows whose content says which row they are: a read
    // buffer reused while a write still holds it would show as a wrong row.
    s.socket.write(queryMessage(`select i, repeat(md5(i::text), 4) from generate_series(1, ${rows}) i`));
    s.socket.pause();
    await new Promise((resolve) => setTimeout(resolve, 500));
    s.socket.resume();
    let count = 0;
    for (let m = await s.next(); m.type !== 'Z'; m = await s.next()) {
      if (m.type !== 'D') continue;
      count++;
      // DataRow: Int16 column count, then per column an Int32 length and the bytes.
      const id = m.body.toString('utf8', 6, 6 + m.body.readInt32BE(2));
      const value = m.body.toString('utf8', 6 + id.length + 4);
      if (id !== String(count) || value !== createHash('md5').update(id).digest('hex').repeat(4)) assert.fail(`row ${count} arrived as ${id}: ${value}`);
    }
    assert.equal(count, rows);
    s.socket.destroy();
  });

  test('Query messages pipelined behind one that waits for a catalog refresh are answered in order', async () => {
    const table = `late_${Date.now()}`;
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    await admin.query(`create table ${table} (v int); insert into ${table} values (7)`);
    await admin.end();
    // The catalog reloads at most once a second.
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const s = await rawSession(p.proxy.port);
    // The proxy has not seen the new table: the first statement waits for the catalog; the second is in the same write.
    s.socket.write(Buffer.concat([queryMessage(`select v from ${table}`), queryMessage('select 8')]));
    const first = await s.until('Z');
    const second = await s.until('Z');
    const value = (ms: Message[]) => ms.map((m) => m.type === 'D' ? m.body.toString('utf8', 6) : m.type === 'E' ? parseErrorFields(m.body)['M'] : '').join('');
    assert.equal(value(first), '7');
    assert.equal(value(second), '8');
    s.socket.destroy();
  });

  test('CancelRequest reaches the right upstream backend', async () => {
    const s = await rawSession(p.proxy.port, 'admin', 'adminpw');
    try {
      s.socket.write(queryMessage('select pg_sleep(30)'));
      await new Promise((r) => setTimeout(r, 300));
      const c = connect({ host: '127.0.0.1', port: p.proxy.port });
      c.on('error', () => undefined);
      c.end(cancelRequestPacket(s.processId, s.secretKey));
      const reply = await s.until('Z');
      const error = reply.find((m) => m.type === 'E');
      assert.ok(error, 'an ErrorResponse');
      assert.equal(parseErrorFields(error.body)['C'], '57014');
    } finally {
      s.socket.destroy();
    }
  });

  test('SSLRequest without a certificate is answered N; psql sslmode=require fails, prefer works', async () => {
    assert.equal(await psql(p.conn().replace('sslmode=disable', 'sslmode=prefer'), 'select 1'), '1');
    const err = await psqlError(p.conn().replace('sslmode=disable', 'sslmode=require'), 'select 1');
    assert.match(err, /server does not support SSL/);
  });

  test('TLS when a certificate is configured', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dp-tls-'));
    try {
      await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
        '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { timeout: 30_000 });
      const t = await startTestProxy(db.url, { policies: [SEED_POLICY], tls: { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') } });
      try {
        const out = await psql(t.conn().replace('sslmode=disable', 'sslmode=require'), 'select ssl_is_used()', []).catch(() => '');
        // ssl_is_used() is an extension function: refused for masked users, so check TLS with the admin's \conninfo.
        assert.equal(out, '');
        const info = await psql(t.conn('admin').replace('sslmode=disable', 'sslmode=require'), '\\conninfo');
        assert.match(info, /SSL connection \(protocol: TLS/);
        assert.equal(await psql(t.conn().replace('sslmode=disable', 'sslmode=require'), 'select lastname from library.authors where id = 6'), 'Liskov');
      } finally {
        await t.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
