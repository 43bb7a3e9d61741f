/**
 * Events to a file and not to the store: the native relay writes a cached statement's two lines itself, from the
 * templates JavaScript made (pgrelay.c). The same statements through a proxy on Node sockets must give the same
 * lines, apart from the values that are fresh per event (ids, times, correlationIds), which must be well-formed,
 * unique, and pair each query's user.authentication with its policy.resolution.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildConfig, startDataProxy } from '../../src/dataproxy/index.ts';
import { linesWritten, relayAvailable } from '../../src/dataproxy/relay.ts';
import { registry } from '../../src/telemetry/index.ts';
import pg from 'pg';
import { BASE_CONFIG, createDatabase, pgbench, psql, query, SEED_POLICY } from './helpers.ts';

let db: Awaited<ReturnType<typeof createDatabase>>;
let dir: string;

before(async () => {
  db = await createDatabase('dp_relay_audit');
  await pgbench(['-i', '-s', '1', '-q', db.url]);
  dir = mkdtempSync(join(tmpdir(), 'dp-relay-audit-'));
});
after(async () => {
  await db.drop();
  rmSync(dir, { recursive: true, force: true });
});

const ACCOUNTS_POLICY = {
  id: 'p-accounts', name: 'accounts', filters: [],
  rules: [{ id: 'a-1', name: 'tokenize balances', condition: { groups: ['analysts'] }, fields: [{ schema: 'public', table: 'pgbench_accounts', field: 'abalance' }],
    transformation: { numericRegex: { regex: '[1-9][0-9]{4}', consistent: true } } }],
};

/** The same statements, in the same order, through a proxy with or without the relay; returns the file's lines. */
async function workload(relay: boolean): Promise<string[]> {
  const config = await buildConfig({ ...BASE_CONFIG, audit: { verbose: true }, policies: [SEED_POLICY, ACCOUNTS_POLICY] }, 'test config');
  const logFile = join(dir, `${relay ? 'relay' : 'node'}.ndjson`);
  const proxy = await startDataProxy({ config, listen: '127.0.0.1:0', upstream: db.url, logFile, project: 'test', relay });
  try {
    const conn = `postgresql://proxy-user:s3cret@127.0.0.1:${proxy.port}/${db.name}?sslmode=disable`;
    // Repeated statements are the relay's cache hits: simple (by template, with literals that need escaping in
    // JSON), extended (node-postgres) and prepared (pgbench), masked and not, and a refusal in between.
    const client = new pg.Client({ connectionString: conn });
    await client.connect();
    try {
      for (let i = 0; i < 5; i++) {
        // node-postgres sends a statement without parameters as a simple Query, with them as Parse/Bind/Execute.
        // JSON escapes in the query text of verbose events: literals (cached by template) and a backslash (by text).
        await client.query(`select id, firstname, 'tab\there "quoted" ${i} é ☃ 😀 \u0001' as t from library.authors where id = ${i + 1}`);
        await client.query('select \'back\\slash\' as b');
        await client.query('select 1; select lastname from library.authors order by id');
        await client.query('select firstname, salary from library.authors where id = $1', [i + 1]);
        await client.query(`select abalance from pgbench_accounts where aid = ${10 + i}`);
        await client.query('select pg_read_file(\'/etc/passwd\')').catch(() => undefined);
      }
    } finally {
      await client.end();
    }
    await psql(conn, 'select count(*) from library.authors');
    await query(conn, 'select firstname from library.authors where id = $1', [2]);
    for (const mode of ['simple', 'extended', 'prepared']) {
      await pgbench(['-n', '-S', '-M', mode, '-c', '2', '-j', '1', '-t', '20', conn]);
    }
  } finally {
    await proxy.stop();
  }
  return readFileSync(logFile, 'utf8').split('\n').filter(Boolean);
}

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** The line with its fresh values replaced, and pgbench's random keys as one. */
const normalized = (line: string): string =>
  line.replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g, 'UUID')
    .replace(/"eventTime":"[^"]*"/g, '"eventTime":"T"')
    .replace(/"sourceIp":"[^"]*"/g, '"sourceIp":"IP"')
    .replace(/aid = \d+/g, 'aid = N');

test('a statement cached by its template gets its own literals back in the rewrite: the same rows as a fresh session gets', async () => {
  const config = await buildConfig({ ...BASE_CONFIG, policies: [SEED_POLICY, ACCOUNTS_POLICY] }, 'test config');
  const proxy = await startDataProxy({ config, listen: '127.0.0.1:0', upstream: db.url, project: 'test' });
  try {
    const conn = `postgresql://proxy-user:s3cret@127.0.0.1:${proxy.port}/${db.name}?sslmode=disable`;
    const statement = (id: number): string => `select id, firstname, salary, 'x''${id}' as mark from library.authors where id = ${id} or lastname = 'Turing' order by id`;
    const client = new pg.Client({ connectionString: conn });
    await client.connect();
    try {
      for (const id of [1, 4, 5, 6]) {
        const cached = (await client.query(statement(id))).rows;
        const fresh = await query(conn, statement(id));
        assert.deepEqual(cached, fresh, statement(id));
        assert.ok(cached.some((r) => r['id'] === id && r['mark'] === `x'${id}`), `row ${id} and its literal`);
      }
    } finally {
      await client.end();
    }
  } finally {
    await proxy.stop();
  }
});

test('the relay writes the lines JavaScript would, with fresh ids, times and correlationIds that pair each query\'s two events', { skip: !relayAvailable() && 'the native relay is not built' }, async () => {
  const metricsBefore = await registry.getSingleMetricAsString('custos_dataproxy_audit_events_total');
  const started = Date.now();
  const writtenBefore = linesWritten();
  const relayed = await workload(true);
  const finished = Date.now();
  assert.ok(linesWritten() - writtenBefore >= 60, 'the relay wrote the cached statements\' lines itself');
  const onNode = await workload(false);

  assert.ok(relayed.length > 150, `${relayed.length} lines`);
  assert.deepEqual(relayed.map(normalized).sort(), onNode.map(normalized).sort(), 'the same lines but for fresh values');

  const events = relayed.map((line) => JSON.parse(line) as { header: { id: string; event: { eventTime: string; action: string } }; attachments: { correlationId: string }[] });
  const ids = new Set<string>();
  const byCorrelation = new Map<string, string[]>();
  for (const e of events) {
    assert.match(e.header.id, UUID_V4);
    assert.ok(!ids.has(e.header.id), 'ids are unique');
    ids.add(e.header.id);
    const at = Date.parse(e.header.event.eventTime);
    assert.equal(new Date(at).toISOString(), e.header.event.eventTime);
    assert.ok(at >= started - 1000 && at <= finished + 1000, e.header.event.eventTime);
    const correlationId = e.attachments[0]!.correlationId;
    assert.match(correlationId, UUID_V4);
    byCorrelation.set(correlationId, [...(byCorrelation.get(correlationId) ?? []), e.header.event.action]);
  }
  for (const [correlationId, actions] of byCorrelation) {
    assert.deepEqual(actions, ['user.authentication', 'policy.resolution'], correlationId);
  }

  const metricsAfter = await registry.getSingleMetricAsString('custos_dataproxy_audit_events_total');
  const resolved = (text: string): number => Number(/action="policy.resolution",outcome="SUCCESS"} (\d+)/.exec(text)?.[1] ?? 0);
  const written = events.filter((e) => e.header.event.action === 'policy.resolution').length;
  assert.ok(resolved(metricsAfter) - resolved(metricsBefore) >= written, 'the events counter includes the lines the relay wrote');
});
