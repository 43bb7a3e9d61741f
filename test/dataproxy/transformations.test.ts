/**
 * Each transformation of the issue, its parameters and record-level filters, observed through the proxy on the
 * real PostgreSQL with psql.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { compileTokenPattern, tokenBlocks, tokenFromBlocks, tokenSql } from '../../src/dataproxy/tokens.ts';
import { createDatabase, psql, query, startTestProxy, type TestProxy } from './helpers.ts';

const SQL = `
CREATE SCHEMA hr;
CREATE TABLE hr.people (id int PRIMARY KEY, firstname text, lastname text, code text, phone text, born date, seen timestamp,
  salary integer, note text, email text, vip boolean);
INSERT INTO hr.people VALUES
  (1, 'Ada', 'Lovelace', 'ABCDEFGH', '+44 20 7946 0000', '1815-12-10', '2024-05-17 13:45:10', 52000, 'likes engines', 'ada@x.org', true),
  (2, 'Alan', 'Turing', 'IJKLMNOP', '+44 20 7946 0001', '1912-06-23', '2024-02-01 08:00:00', 61000, NULL, 'alan@x.org', false),
  (3, 'Ada', 'Byron', 'QRSTUVWX', '+44 20 7946 0002', '1816-01-01', '2024-03-03 03:03:03', 40000, 'same first name', 'byron@x.org', false);
CREATE TABLE hr.readers (name text);
INSERT INTO hr.readers VALUES ('Ada'), ('Alan'), ('Nobody');
CREATE TABLE hr.secret (x int);
INSERT INTO hr.secret VALUES (1), (2);
CREATE TABLE hr.open (id int, kept text, token text);
INSERT INTO hr.open VALUES (1, 'kept-1', 'Ada'), (2, 'kept-2', 'Alan');
`;

const f = (table: string, field: string) => ({ schema: 'hr', table, field });
const rule = (id: string, table: string, field: string, transformation: unknown) =>
  ({ id, name: id, condition: { groups: ['analysts'] }, fields: [f(table, field)], transformation });

const POLICIES = [{
  id: 'p-hr', name: 'hr',
  rules: [
    rule('firstname', 'people', 'firstname', { regex: { regex: '[A-Z][a-z]{3,8}', consistent: true, consistencyGroupId: 'names' } }),
    rule('reader', 'readers', 'name', { regex: { regex: '[A-Z][a-z]{3,8}', consistent: true, consistencyGroupId: 'names' } }),
    rule('lastname', 'people', 'lastname', { constant: { value: 'REDACTED' } }),
    rule('code-keep-first-3', 'people', 'code', { truncate: { length: 3, preserveSelectedCharacters: true, truncateFromStart: true } }),
    rule('phone-keep-last-4', 'people', 'phone', { truncate: { length: 4, preserveSelectedCharacters: true, truncateFromStart: false } }),
    rule('note-drop-first-6', 'people', 'note', { truncate: { length: 6, preserveSelectedCharacters: false, truncateFromStart: true } }),
    rule('email-drop', 'people', 'email', { drop: {} }),
    rule('born-year', 'people', 'born', { generalizeDate: { granularity: 'year' } }),
    rule('seen-month', 'people', 'seen', { generalizeDate: { granularity: 'month' } }),
    rule('salary', 'people', 'salary', {
      ifAndElseIfs: [{ expression: 'vip', transformation: { retain: {} } }, { expression: 'salary > 60000', transformation: { numericRegex: { regex: '9[0-9]{5}', consistent: true } } }],
      else: { redactWithNull: {} },
    }),
    rule('vip', 'people', 'vip', { retain: {} }),
  ],
  filters: [{ ...f('people', 'id'), expression: 'id <> 99' }],
}, {
  id: 'p-open', name: 'open', filters: [],
  rules: [rule('open-kept', 'open', 'kept', { retain: {} }), rule('open-token', 'open', 'token', { regex: { regex: '[A-Z][a-z]{3,8}', consistent: true, consistencyGroupId: 'names' } })],
}, {
  id: 'p-secret', name: 'secret', filters: [],
  rules: [{ id: 's', name: 's', condition: { groups: ['auditors'] }, fields: [f('secret', 'x')], transformation: { retain: {} } }],
}];

let db: Awaited<ReturnType<typeof createDatabase>>;
let p: TestProxy;
const rows = async (sql: string, user?: string): Promise<string[][]> =>
  (await psql(p.conn(user), sql, ['-q'])).split('\n').filter(Boolean).map((l) => l.split('|'));

before(async () => {
  db = await createDatabase('dp_transform', SQL);
  p = await startTestProxy(db.url, {
    policies: POLICIES,
    users: [
      { name: 'proxy-user', password: 's3cret', groups: ['analysts'] },
      { name: 'other-analyst', password: 's3cret', groups: ['analysts'] },
      { name: 'admin', password: 'adminpw', groups: [] },
    ],
  });
});
after(async () => {
  await p.stop();
  await db.drop();
});

describe('transformations', () => {
  test('the SQL token generator and the JavaScript one agree, on the database itself', async () => {
    for (const pattern of ['[A-Za-z]{1,15}', 'X-[0-9]{3}[a-f]?', '[a-z]{50,60}', "[a'b]{4}"]) {
      const atoms = compileTokenPattern(pattern);
      for (let i = 0; i < 5; i++) {
        const blocks = Array.from({ length: tokenBlocks(atoms) }, () => randomBytes(32));
        const sql = tokenSql(atoms, blocks.map((b) => `pg_catalog.decode('${b.toString('hex')}', 'hex')`));
        const [row] = await query(db.url, `SELECT ${sql} AS token`);
        assert.equal(row!['token'], tokenFromBlocks(atoms, blocks), pattern);
      }
    }
  });

  test('regex: tokens match the pattern, are consistent within a group, and joins on tokens still work', async () => {
    const names = await rows('select id, firstname from hr.people order by id');
    for (const [, token] of names) assert.match(token!, /^[A-Z][a-z]{3,8}$/);
    assert.equal(names[0]![1], names[2]![1], 'same input, same token');
    assert.notEqual(names[0]![1], names[1]![1]);
    assert.notEqual(names[0]![1], 'Ada');
    const again = await rows('select firstname from hr.people order by id', 'other-analyst');
    assert.deepEqual(again.map((r) => r[0]), names.map((r) => r[1]), 'tokens do not depend on the session or user');
    const joined = await rows('select p.id, r.name from hr.people p join hr.readers r on r.name = p.firstname order by p.id');
    assert.deepEqual(joined.map((r) => r[0]), ['1', '2', '3'], 'the readers table shares the consistency group');
  });

  test('a table read only through retained and unprotected columns, with no filter, is read as it is; any transformed column masks it', async () => {
    assert.deepEqual(await rows('select id, kept from hr.open order by id'), [['1', 'kept-1'], ['2', 'kept-2']]);
    const [, resolution] = (await p.events()).slice(-2);
    assert.equal(resolution!.header.event.action, 'policy.resolution');
    assert.match(JSON.stringify(resolution!.attachments[0]!.requestData), /"field":"kept"/, 'the retained field is still reported');
    assert.equal(await psql(p.conn(), 'select count(*) from hr.open'), '2');
    assert.deepEqual(await rows("select id from hr.open where token = 'Ada'"), [], 'a comparison on the tokenized column sees tokens');
    assert.deepEqual(await rows("select kept from hr.open o where o.token in ('Ada', 'Alan')"), []);
    for (const sql of ['select o from hr.open o', 'select row_to_json(o) from hr.open o', 'select * from hr.open', 'select kept, token from hr.open']) {
      const out = await psql(p.conn(), sql);
      assert.doesNotMatch(out, /\bAda\b|\bAlan\b/, sql);
    }
  });

  test('constant, truncate (all four ways), drop', async () => {
    const out = await rows('select lastname, code, phone, note from hr.people order by id');
    assert.deepEqual(out, [['REDACTED', 'ABC', '0000', 'engines'], ['REDACTED', 'IJK', '0001', ''], ['REDACTED', 'QRS', '0002', 'irst name']]);
    const columns = await rows("select string_agg(column_name, ',' order by ordinal_position) from information_schema.columns where table_name = 'people'");
    assert.equal(columns[0]![0], 'id,firstname,lastname,code,phone,born,seen,salary,note,vip');
  });

  test('generalizeDate keeps the column type', async () => {
    assert.deepEqual(await rows('select born, seen, pg_typeof(born), pg_typeof(seen) from hr.people order by id'), [
      ['1815-01-01', '2024-05-01 00:00:00', 'date', 'timestamp without time zone'],
      ['1912-01-01', '2024-02-01 00:00:00', 'date', 'timestamp without time zone'],
      ['1816-01-01', '2024-03-01 00:00:00', 'date', 'timestamp without time zone'],
    ]);
  });

  test('cell level: retain for VIPs, numericRegex above 60000, else null', async () => {
    const out = await rows('select salary, pg_typeof(salary) from hr.people order by id');
    assert.deepEqual(out[0], ['52000', 'integer']);
    assert.match(out[1]![0]!, /^9\d{5}$/);
    assert.deepEqual(out[2], ['', 'integer']);
  });

  test('watermarkingRegex appends a per-user mark; non-consistent tokens change per read', async () => {
    const w = await startTestProxy(db.url, {
      policies: [{ id: 'w', name: 'w', rules: [
        rule('wm', 'people', 'firstname', { regex: { regex: '[a-z]{6}', consistent: true, watermarkingRegex: '-[0-9]{4}' } }),
        rule('rnd', 'people', 'lastname', { regex: { regex: '[a-z]{10}' } }),
      ], filters: [] }],
      users: [{ name: 'proxy-user', password: 's3cret', groups: ['analysts'] }, { name: 'u2', password: 'u2', groups: ['analysts'] }],
    });
    try {
      const a = (await psql(w.conn(), 'select firstname from hr.people where id = 1')).trim();
      const b = (await psql(w.conn('u2', 'u2'), 'select firstname from hr.people where id = 1')).trim();
      assert.match(a, /^[a-z]{6}-\d{4}$/);
      assert.equal(a.slice(0, 6), b.slice(0, 6), 'the token is the same');
      assert.notEqual(a.slice(6), b.slice(6), 'the mark names the user');
      const r1 = await psql(w.conn(), 'select lastname from hr.people order by id');
      const r2 = await psql(w.conn(), 'select lastname from hr.people order by id');
      assert.notEqual(r1, r2);
      for (const t of r1.split('\n')) assert.match(t, /^[a-z]{10}$/);
    } finally {
      await w.stop();
    }
  });

  test('users outside the rule conditions see the original values', async () => {
    assert.deepEqual(await rows('select firstname, lastname, email from hr.people where id = 1', 'admin'), [['Ada', 'Lovelace', 'ada@x.org']]);
  });

  test('record-level filters: ALLOW_ACCESS shows unfiltered tables, DENY_ACCESS hides rows no filter grants', async () => {
    assert.deepEqual(await rows('select count(*) from hr.secret'), [['2']]);
    const d = await startTestProxy(db.url, { policies: POLICIES, rlacFilterBehaviour: 'DENY_ACCESS' });
    try {
      assert.equal(await psql(d.conn(), 'select count(*) from hr.secret'), '0');
      assert.equal(await psql(d.conn(), 'select count(*) from hr.people'), '3');
    } finally {
      await d.stop();
    }
  });
});
