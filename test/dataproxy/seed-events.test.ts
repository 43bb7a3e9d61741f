/**
 * Seed 003's six example events, reproduced field for field from real traffic (psql against the real PostgreSQL
 * through the proxy, the seed's query `select * from library.authors`). Values that are fresh per event (ids,
 * times, correlation ids) are checked for their format and then set to the seed's, so the comparison covers
 * every other field, its value and its key order.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import pg from 'pg';
import type { DataProxyAuditEvent } from '../../src/model/index.ts';
import { createDatabase, psql, psqlError, query, startTestProxy } from './helpers.ts';

const seed = (name: string): DataProxyAuditEvent => JSON.parse(readFileSync(new URL(`../fixtures/seeds/data-proxy-${name}.json`, import.meta.url), 'utf8'));
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Checks the fresh values' formats, then copies the seed's into the event. */
function aligned(event: DataProxyAuditEvent, expected: DataProxyAuditEvent): DataProxyAuditEvent {
  const copy = structuredClone(event);
  assert.match(copy.header.id, UUID);
  assert.match(copy.header.event.eventTime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  copy.header.id = expected.header.id;
  copy.header.event.eventTime = expected.header.event.eventTime;
  copy.attachments.forEach((a, i) => {
    if (a.correlationId === undefined) return;
    assert.match(a.correlationId, UUID);
    a.correlationId = expected.attachments[i]?.correlationId;
  });
  return copy;
}

/** Same fields, same values, same order. */
function assertSameEvent(actual: DataProxyAuditEvent, expected: DataProxyAuditEvent): void {
  assert.equal(JSON.stringify(aligned(actual, expected), null, 1), JSON.stringify(expected, null, 1));
}

const field = (f: string) => ({ schema: 'library', table: 'authors', field: f });
const rule = (id: string, f: string, transformation: unknown) => ({ id, name: id, condition: { groups: ['analysts'] }, fields: [field(f)], transformation });
const regex = { regex: { regex: '[A-Za-z]{1,15}' } };
const FILTER = [{ ...field('firstname'), expression: "firstname <> 'AAAAA'" }];
const policy = (rules: unknown[]) => [{ id: 'p-1', name: 'authors', rules, filters: FILTER }];
const SEED_POD = 'dynamic-proxy-b48ad3d7-7b7c-431f-ad5d-633e5641c0cd-59c677blq52m';

let db: Awaited<ReturnType<typeof createDatabase>>;
before(async () => {
  db = await createDatabase('dp_seed');
});
after(async () => {
  await db.drop();
});

describe('seed 003 example events', () => {
  test('user info audit (user.authentication) and the verbose query event share a correlationId', async () => {
    const p = await startTestProxy(db.url, {
      audit: { verbose: true },
      users: [{ name: 'proxy-user', id: 'successfulUser', password: 's3cret', groups: ['analysts'] }],
      policies: policy([rule('r-2', 'lastname', { retain: {} }), rule('r-1', 'firstname', regex), rule('r-3', 'id', { retain: {} })]),
    });
    try {
      await psql(p.conn(), 'select * from library.authors');
      const [login, query] = await p.events();
      const expectedLogin = seed('user-authentication');
      // The login event names the user by id; this deployment's user id is the seed's verbose example's.
      expectedLogin.header.initiator.id = 'successfulUser';
      assertSameEvent(login!, expectedLogin);
      assertSameEvent(query!, seed('query-verbose'));
      assert.equal(login!.attachments[0]!.correlationId, query!.attachments[0]!.correlationId);
    } finally {
      await p.stop();
    }
  });

  test('user info audit with the seed user id', async () => {
    const p = await startTestProxy(db.url, {
      users: [{ name: 'proxy-user', id: '29bd6d2a-10a3-44aa-8de7-1f264e22e21c', password: 's3cret', groups: ['analysts'] }],
      policies: [],
    });
    try {
      await psql(p.conn(), 'select 1');
      assertSameEvent((await p.events())[0]!, seed('user-authentication'));
    } finally {
      await p.stop();
    }
  });

  test('non-verbose query event on a Kubernetes node', async () => {
    const p = await startTestProxy(db.url, {
      tenant: 'bc5bbfa3-e07c-4688-8644-a516afe40c1b',
      dataPlane: { id: 'dp-1', namespace: 'dpp-8193-common-audit-dp', pod: SEED_POD, node: 'ip-10-18-122-83.eu-west-1.compute.internal' },
      users: [{ name: 'proxy-user', id: 'ba992d9f-2c0c-476e-9584-9e8ef923a5bf', password: 's3cret', groups: ['analysts'] }],
      policies: policy([rule('r-1', 'firstname', regex), rule('r-2', 'lastname', { retain: {} }), rule('r-3', 'id', { retain: {} })]),
    });
    try {
      await psql(p.conn(), 'select * from library.authors');
      const events = await p.events();
      assert.equal(events.length, 2);
      assertSameEvent(events[1]!, seed('query-nonverbose'));
    } finally {
      await p.stop();
    }
  });

  test('verbose metadata request (psql \\dt lists tables)', async () => {
    const p = await startTestProxy(db.url, {
      audit: { verbose: true },
      dataPlane: { id: '01234567-89ab-cdef-0123-456789abcdef' },
      policies: policy([rule('r-1', 'firstname', regex), rule('r-2', 'id', { retain: {} }), rule('r-3', 'lastname', { retain: {} })]),
    });
    try {
      const listing = await psql(p.conn(), '\\dt library.*');
      assert.match(listing, /authors/);
      const metadata = (await p.events()).find((e) => e.attachments[0]?.request?.metadata !== undefined);
      assert.ok(metadata, 'a metadata event');
      assertSameEvent(metadata, seed('metadata-verbose'));
    } finally {
      await p.stop();
    }
  });

  test('authentication failure', async () => {
    const p = await startTestProxy(db.url, { users: [{ name: 'user@gmail.com', password: 'right', groups: [] }], policies: [] });
    try {
      const stderr = await psqlError(p.conn('user@gmail.com', 'wrong'), 'select 1');
      assert.match(stderr, /password authentication failed for user "user@gmail.com"/);
      const [event] = await p.events();
      const expected = seed('authentication-failure');
      // The seed's reason comes from its identity server ("Server Error"); here the password was wrong.
      (expected.header.status.reason as { message: string }).message = 'Received error while trying to authenticate username user@gmail.com: password authentication failed';
      assertSameEvent(event!, expected);
    } finally {
      await p.stop();
    }
  });

  test('policy retrieval failure: the query is refused', async () => {
    const server: Server = createServer((_req, res) => res.writeHead(500).end('boom'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    const p = await startTestProxy(db.url, { policySource: { url: `http://127.0.0.1:${port}/policies` } });
    try {
      const stderr = await psqlError(p.conn(), 'select * from library.authors');
      assert.match(stderr, /Failed to retrieve policies\. Internal server error/);
      const failure = (await p.events()).find((e) => e.header.event.action === 'policy.resolution');
      assertSameEvent(failure!, seed('policy-retrieval-failure'));
    } finally {
      await p.stop();
      server.close();
    }
  });

  test('an unreachable policy URL refuses the query with a FAILURE event', async () => {
    // A port that was just free: nothing listens there.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const port = (probe.address() as { port: number }).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    const p = await startTestProxy(db.url, { policySource: { url: `http://127.0.0.1:${port}/policies`, timeoutMs: 2000 } });
    try {
      const stderr = await psqlError(p.conn(), 'select * from library.authors');
      assert.match(stderr, /ERROR: {2}Failed to retrieve policies\./);
      const failure = (await p.events()).find((e) => e.header.event.action === 'policy.resolution')!;
      assert.equal(failure.header.status.outcome, 'FAILURE');
      assert.match((failure.header.status.reason as { message: string }).message, /^Failed to retrieve policies\. .*ECONNREFUSED/);
    } finally {
      await p.stop();
    }
  });

  test('the NDJSON file gets the same events as the store: verbose with context, quotes and non-ASCII in the query, extended protocol', async () => {
    const p = await startTestProxy(db.url, {
      audit: { verbose: true, includeContext: true },
      policies: policy([rule('r-1', 'firstname', regex), rule('r-2', 'lastname', { retain: {} })]),
    });
    try {
      await psql(p.conn(), `select firstname, 'é "\\ \u2028' as odd from library.authors where id = 1`);
      await psql(p.conn(), 'select * from library.authors where id = 2');
      await query(p.conn(), 'select lastname from library.authors where id = $1', [1]);
      await query(p.conn(), 'select count(*) from pg_class');
      await psqlError(p.conn(), 'delete from library.authors');
      const events = await p.events();
      assert.deepEqual(events.map((e) => e.attachments[0]?.request?.query ?? e.attachments[0]?.request?.metadata ?? e.header.event.action), [
        'user.authentication', `select firstname, 'é "\\ \u2028' as odd from library.authors where id = 1`,
        'user.authentication', 'select * from library.authors where id = 2',
        'user.authentication', 'select lastname from library.authors where id = $1',
        'user.authentication', 'get tables',
        'user.authentication', 'delete from library.authors',
      ]);
    } finally {
      await p.stop();
    }
  });

  test('LogEntries: logName, severity and categories', async () => {
    const p = await startTestProxy(db.url, { policies: policy([rule('r-1', 'firstname', regex)]) });
    try {
      await psql(p.conn(), 'select * from library.authors');
      await psqlError(p.conn('proxy-user', 'nope'), 'select 1');
      await p.events();
      const entries = p.sink.entries;
      assert.deepEqual(entries.map((e) => [e.logName, e.severity, e.categories]), [
        ['projects/test/logs/data-proxy-audit', 'WARNING', ['authenticationCheck', 'userLogin']],
        ['projects/test/logs/data-proxy-audit', 'WARNING', ['dataExport']],
        ['projects/test/logs/data-proxy-audit', 'WARNING', ['authenticationCheck']],
      ]);
      assert.equal(entries[0]!.insertId, (entries[0]!.jsonPayload as unknown as DataProxyAuditEvent).header.id);
    } finally {
      await p.stop();
    }
  });
});

describe('two events per query (seed 003: user.authentication and policy.resolution, linked by correlationId)', () => {
  /** Splits a session's events into its query pairs: [authentication, policy.resolution], checking the links. */
  function pairs(events: DataProxyAuditEvent[]): [DataProxyAuditEvent, DataProxyAuditEvent][] {
    assert.equal(events.length % 2, 0, `an even number of events: ${events.map((e) => e.header.event.action).join(', ')}`);
    const out: [DataProxyAuditEvent, DataProxyAuditEvent][] = [];
    for (let i = 0; i < events.length; i += 2) {
      const [auth, resolution] = [events[i]!, events[i + 1]!];
      assert.equal(auth.header.event.action, 'user.authentication');
      assert.equal(resolution.header.event.action, 'policy.resolution');
      assert.match(auth.attachments[0]!.correlationId!, UUID);
      assert.equal(resolution.attachments[0]!.correlationId, auth.attachments[0]!.correlationId, `pair ${i / 2} is linked`);
      out.push([auth, resolution]);
    }
    assert.equal(new Set(out.map(([a]) => a.attachments[0]!.correlationId)).size, out.length, 'every pair has its own correlationId');
    assert.equal(new Set(events.map((e) => e.header.id)).size, events.length, 'every event has its own id');
    return out;
  }

  test('one psql session, three queries: the login event pairs with the first, each later query gets its own authentication', async () => {
    const p = await startTestProxy(db.url, { policies: policy([rule('r-1', 'firstname', regex)]) });
    try {
      const out = await psql(p.conn(), 'select count(*) from library.authors', ['-c', 'select firstname from library.authors where id = 1', '-c', 'select 42']);
      assert.deepEqual(out.split('\n').length, 3);
      const events = await p.events();
      const [first, second, third] = pairs(events);
      assert.ok(first && second && third && events.length === 6);
      assert.deepEqual(p.sink.entries.map((e) => e.categories), [
        ['authenticationCheck', 'userLogin'], ['dataExport'],
        ['authenticationCheck'], ['dataExport'],
        ['authenticationCheck'], ['dataExport'],
      ]);
      // A query's authentication event is the login event with its own id, time and correlationId.
      for (const [auth] of [second, third]) assert.deepEqual(aligned(auth, first[0]), first[0]);
      assert.equal(third[1].header.status.outcome, 'SUCCESS');
    } finally {
      await p.stop();
    }
  });

  test('extended protocol and refused statements: every Parse gets its pair, a refusal included', async () => {
    const p = await startTestProxy(db.url, { audit: { verbose: true }, policies: policy([rule('r-1', 'firstname', regex)]) });
    const c = new pg.Client({ connectionString: p.conn() });
    await c.connect();
    try {
      await c.query('select firstname from library.authors where id = $1', [1]);
      await assert.rejects(c.query('delete from library.authors where id = $1', [1]), /not allowed/);
      await c.query('select lastname from library.authors where id = $1', [2]);
      await c.end();
      const events = await p.events();
      assert.deepEqual(pairs(events).map(([, r]) => [r.attachments[0]!.request?.query, r.header.status.outcome]), [
        ['select firstname from library.authors where id = $1', 'SUCCESS'],
        ['delete from library.authors where id = $1', 'FAILURE'],
        ['select lastname from library.authors where id = $1', 'SUCCESS'],
      ]);
      assert.deepEqual(p.sink.entries.filter((e) => e.labels?.['action'] === 'user.authentication').map((e) => e.categories),
        [['authenticationCheck', 'userLogin'], ['authenticationCheck'], ['authenticationCheck']]);
    } finally {
      await c.end().catch(() => undefined);
      await p.stop();
    }
  });

  test('a failed login is one FAILURE user.authentication event and nothing else', async () => {
    const p = await startTestProxy(db.url, { policies: [] });
    try {
      await psqlError(p.conn('proxy-user', 'wrong'), 'select 1');
      const events = await p.events();
      assert.deepEqual(events.map((e) => [e.header.event.action, e.header.status.outcome]), [['user.authentication', 'FAILURE']]);
    } finally {
      await p.stop();
    }
  });
});
