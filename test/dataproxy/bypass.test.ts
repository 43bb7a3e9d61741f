/**
 * The bypass suite of docs/dataproxy-security.md: each row is one way a masked user might try to reach a protected
 * value or a filtered row, run through the proxy by psql (simple protocol) and by node-postgres (extended
 * protocol). Each must return masked data or a refusal (SQLSTATE 42501, or an error that names no raw value);
 * never raw values. Raw values of the demo table are listed in RAW; the filtered row is id 3 ("AAAAA" "Hidden").
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { createDatabase, psql, SEED_POLICY, startTestProxy, type TestProxy } from './helpers.ts';

/** Raw values the masked user must never see: first names (tokenized), the filtered row, hidden salaries, e-mails. */
const RAW = ['Ada', 'Alan', 'Grace', 'Edsger', 'Barbara', 'Zelda', 'AAAAA', 'Hidden', '99999', '70500', '58250', 'example.org', 'Secret Book'];
const rawIn = (text: string): string[] => RAW.filter((r) => new RegExp(`(^|[^A-Za-z0-9])${r}($|[^A-Za-z0-9])`).test(text));

type Expect =
  | { refused: RegExp } // SQLSTATE 42501 with this message
  | { error: string } // the database's own error (SQLSTATE), e.g. a column that the masked form does not have
  | { rows: (out: string) => void }; // masked results, checked further

interface Case {
  name: string;
  sql: string;
  expect: Expect;
  /** psql only (several statements or psql-only syntax). */
  simpleOnly?: boolean;
}

/** Five demo rows pass the filter, plus the child table's row (masked too): six. */
const VISIBLE_ROWS = '6';
const noRows = { rows: (out: string) => assert.equal(out, '') };
const masked = { rows: (out: string) => assert.notEqual(out, '') };
const refused = (m: RegExp): Expect => ({ refused: m });

const CASES: Case[] = [
  // Reading the table, however it is written.
  { name: 'SELECT *', sql: 'select * from library.authors', expect: masked },
  { name: 'TABLE', sql: 'table library.authors', expect: masked },
  { name: 'ONLY', sql: 'select * from only library.authors', expect: masked },
  { name: 'quoted and upper-case names', sql: 'select * from "library"."authors" union all select * from LIBRARY.AUTHORS', expect: masked },
  { name: 'unicode-escaped identifier', sql: 'select firstname from U&"library".U&"\\0061uthors"', expect: masked },
  { name: 'comments inside the name', sql: 'select/**/firstname from library./*x*/authors', expect: masked },
  { name: 'whole-row reference', sql: 'select a from library.authors a', expect: masked },
  { name: 'row_to_json', sql: 'select row_to_json(a) from library.authors a', expect: masked },
  { name: 'field of a whole-row reference', sql: 'select (a).firstname, (a).salary from library.authors a', expect: masked },
  { name: 'NATURAL join with the table', sql: 'select * from library.authors natural join library.authors b', expect: masked },
  { name: 'subquery', sql: 'select * from (select * from library.authors) x', expect: masked },
  { name: 'scalar subquery in the select list', sql: 'select (select firstname from library.authors where id = 1)', expect: masked },
  { name: 'LATERAL', sql: 'select x.* from (select 1) y, lateral (select firstname, salary from library.authors) x', expect: masked },
  { name: 'CTE', sql: 'with x as (select * from library.authors) select * from x', expect: masked },
  { name: 'recursive CTE named like the table', sql: 'with recursive authors as (select * from library.authors) select * from authors', expect: masked },
  { name: 'UNION with a constant', sql: "select firstname from library.authors union select 'x'", expect: masked },
  { name: 'array of a subquery', sql: 'select array(select firstname from library.authors)', expect: masked },
  { name: 'unnest of an array subquery', sql: 'select * from unnest(array(select salary from library.authors))', expect: masked },
  { name: 'window function', sql: 'select lag(firstname) over (order by id), lead(salary) over (order by id) from library.authors', expect: masked },
  { name: 'self join on the token (consistent tokenization)', sql: 'select count(*) from library.authors a join library.authors b on a.firstname = b.firstname',
    expect: { rows: (out) => assert.equal(out, VISIBLE_ROWS) } },

  // Filtering, sorting, grouping and aggregating see masked values only; the filtered row counts for nothing.
  { name: 'WHERE on the original first name', sql: "select id from library.authors where firstname = 'Ada'", expect: noRows },
  { name: 'WHERE LIKE on the original first name', sql: "select id from library.authors where firstname like 'Gr%'", expect: noRows },
  { name: 'WHERE on a redacted salary', sql: 'select id from library.authors where salary > 65000 and salary < 80000', expect: noRows },
  { name: 'WHERE on the filtered row', sql: "select count(*) from library.authors where lastname = 'Hidden' or id = 3", expect: { rows: (out) => assert.equal(out, '0') } },
  { name: 'equality on a retained column pushed into the filter fence still cannot reach the filtered row', sql: "select * from library.authors where lastname = 'Hidden'", expect: noRows },
  { name: 'equality on the key of the filtered row', sql: 'select firstname from library.authors a where a.id = 3', expect: noRows },
  { name: 'equality on a tokenized column is not pushed below the masking', sql: "select id from library.authors where firstname = 'AAAAA'", expect: noRows },
  { name: 'EXISTS probe', sql: "select 1 where exists (select 1 from library.authors where firstname = 'Ada')", expect: noRows },
  { name: 'IN probe', sql: "select 1 where 'Ada' in (select firstname from library.authors)", expect: noRows },
  { name: 'count(*) excludes the filtered row', sql: 'select count(*) from library.authors', expect: { rows: (out) => assert.equal(out, VISIBLE_ROWS) } },
  { name: 'aggregates over the masked salary', sql: 'select max(salary), sum(salary), count(salary) from library.authors',
    expect: { rows: (out) => assert.equal(out, '80100.00|193100.00|3') } },
  { name: 'GROUP BY the token', sql: 'select firstname, count(*) from library.authors group by firstname', expect: masked },
  { name: 'ORDER BY the token', sql: 'select firstname from library.authors order by firstname', expect: masked },
  { name: 'join with an unprotected table keeps the filter', sql: 'select b.title from library.books b join library.authors a on a.id = b.author_id order by b.id',
    expect: { rows: (out) => assert.equal(out.split('\n').length, 5) } },
  { name: 'leaky predicate on the filtered row (division by zero)', sql: "select count(*) from library.authors where 1 / (case when lastname = 'Hidden' then 0 else 1 end) = 1",
    expect: { rows: (out) => assert.equal(out, VISIBLE_ROWS) } },
  { name: 'leaky predicate on the filtered row (cast error echoing the value)',
    sql: "select count(*) from library.authors where (case when lastname = 'Hidden' then cast(lastname as int) else 0 end) = 0",
    expect: { rows: (out) => assert.equal(out, VISIBLE_ROWS) } },
  { name: 'leaky predicate on a tokenized value (cast error echoes the token, not the name)',
    sql: 'select count(*) from library.authors where cast(firstname as int) = 1', expect: { error: '22P02' } },

  // Dropped fields and system columns do not exist in the masked form.
  { name: 'a dropped field', sql: 'select email from library.authors', expect: { error: '42703' } },
  { name: 'system columns', sql: 'select ctid, xmin from library.authors', expect: { error: '42703' } },
  { name: 'tableoid', sql: "select * from library.authors where tableoid = 'library.authors'::regclass", expect: { error: '42703' } },
  { name: 'schema-qualified column reference', sql: 'select library.authors.firstname from library.authors', expect: { error: '42P01' } },
  { name: 'COPY with a dropped column', sql: 'copy library.authors (id, email) to stdout', expect: { error: '42703' } },
  { name: 'column listing hides the dropped field', sql: "select column_name from information_schema.columns where table_name = 'authors' and column_name = 'email'", expect: noRows },
  { name: 'pg_attribute hides the dropped field', sql: "select attname from pg_attribute where attrelid = 'library.authors'::regclass and attname = 'email'", expect: noRows },

  // Export paths.
  { name: 'COPY table TO STDOUT', sql: 'copy library.authors to stdout', expect: masked, simpleOnly: true },
  { name: 'COPY (query) TO STDOUT', sql: 'copy (select * from library.authors) to stdout with (format csv)', expect: masked, simpleOnly: true },
  { name: 'COPY to a server file', sql: "copy library.authors to '/tmp/custos-leak.csv'", expect: refused(/server file/) },
  { name: 'COPY to a program', sql: "copy (select 1) to program 'cat'", expect: refused(/program/) },
  { name: 'PREPARE / EXECUTE', sql: 'prepare p as select firstname, salary from library.authors; execute p', expect: masked, simpleOnly: true },
  { name: 'cursor', sql: 'begin; declare c cursor for select * from library.authors; fetch all from c; commit', expect: masked, simpleOnly: true },
  { name: 'EXPLAIN of a masked query (would show keys and filters)', sql: 'explain select * from library.authors', expect: refused(/EXPLAIN/) },

  // Catalogs with sample values, other sessions' query text, credentials.
  { name: 'pg_stats', sql: "select most_common_vals from pg_stats where tablename = 'authors'", expect: refused(/pg_stats/) },
  { name: 'pg_statistic', sql: 'select * from pg_catalog.pg_statistic', expect: refused(/pg_statistic/) },
  { name: 'pg_stats_ext', sql: 'select * from pg_stats_ext', expect: refused(/pg_stats_ext/) },
  { name: 'pg_stat_activity (rewritten query text)', sql: 'select query from pg_stat_activity', expect: refused(/pg_stat_activity/) },
  { name: 'pg_prepared_statements', sql: 'select statement from pg_prepared_statements', expect: refused(/pg_prepared_statements/) },
  { name: 'pg_stat_user_tables (live row counts)', sql: 'select n_live_tup from pg_stat_user_tables', expect: refused(/pg_stat_user_tables/) },
  { name: 'pg_authid', sql: 'select rolpassword from pg_authid', expect: refused(/pg_authid/) },
  { name: 'current_query()', sql: 'select current_query()', expect: refused(/current_query/) },

  // Functions that run SQL from text, read files or large objects, or are not built in.
  { name: 'query_to_xml', sql: "select query_to_xml('select * from library.authors', true, false, '')", expect: refused(/query_to_xml/) },
  { name: 'table_to_xml', sql: "select table_to_xml('library.authors', true, false, '')", expect: refused(/table_to_xml/) },
  { name: 'cursor_to_xml', sql: "select cursor_to_xml('c', 10, true, false, '')", expect: refused(/cursor_to_xml/) },
  { name: 'ts_stat', sql: "select * from ts_stat('select to_tsvector(firstname) from library.authors')", expect: refused(/ts_stat/) },
  { name: 'pg_read_file', sql: "select pg_catalog.pg_read_file('/etc/passwd')", expect: refused(/pg_read_file/) },
  { name: 'lo_import', sql: "select lo_import('/etc/passwd')", expect: refused(/lo_import/) },
  { name: 'dblink (not built in)', sql: "select * from dblink('dbname=x', 'select 1') as t(a int)", expect: refused(/dblink/) },
  { name: 'a user-defined function reading the table', sql: 'select * from public.leak_authors()', expect: refused(/not a built-in function/) },
  { name: 'an unqualified user-defined function', sql: 'select * from leak_authors()', expect: refused(/not a built-in function/) },
  { name: 'set_config(search_path)', sql: "select set_config('search_path', 'library', false)", expect: refused(/set_config/) },

  // Relations the proxy cannot see through.
  { name: 'a view over the protected table', sql: 'select * from library.authors_v', expect: refused(/view/) },
  { name: 'a materialized view over it', sql: 'select * from library.authors_mv', expect: refused(/materialized view/) },
  { name: 'a child table inheriting its rows', sql: 'select * from library.authors_child', expect: refused(/inherits/) },
  { name: 'the parent includes the child rows, masked', sql: "select count(*) from library.authors where firstname = 'Zelda'", expect: { rows: (out) => assert.equal(out, '0') } },
  { name: 'an unknown relation', sql: 'select * from nowhere_table', expect: refused(/unknown/) },
  { name: 'unqualified name not on the search_path', sql: 'select * from authors', expect: refused(/unknown/) },
  { name: 'a later CTE does not shadow a table for an earlier one', sql: 'with a as (select * from authors), authors as (select 1 as x) select * from a', expect: refused(/unknown/) },
  { name: 'SET search_path', sql: 'set search_path = library', expect: refused(/search_path/) },
  { name: 'SET standard_conforming_strings', sql: 'set standard_conforming_strings = off', expect: refused(/standard_conforming_strings/) },
  { name: 'SET ROLE', sql: 'set role postgres', expect: refused(/role/) },

  // Writes and code.
  { name: 'INSERT', sql: "insert into library.authors (id, firstname, lastname) values (99, 'x', 'y')", expect: refused(/not allowed for masked users/) },
  { name: 'UPDATE … RETURNING the original', sql: 'update library.authors set id = id returning firstname', expect: refused(/not allowed for masked users/) },
  { name: 'DELETE', sql: 'delete from library.authors', expect: refused(/not allowed/) },
  { name: 'data-modifying CTE', sql: 'with x as (delete from library.authors returning *) select * from x', expect: refused(/not allowed/) },
  { name: 'SELECT INTO', sql: 'select * into library.copy_of_authors from library.authors', expect: refused(/SELECT INTO/) },
  { name: 'CREATE TABLE AS', sql: 'create table library.copy2 as select * from library.authors', expect: refused(/not allowed/) },
  { name: 'CREATE VIEW', sql: 'create view library.v2 as select * from library.authors', expect: refused(/not allowed/) },
  { name: 'FOR UPDATE', sql: 'select * from library.authors for update', expect: refused(/FOR UPDATE/) },
  { name: 'DO block', sql: "do $$ begin raise notice '%', (select firstname from library.authors limit 1); end $$", expect: refused(/not allowed/) },
  { name: 'TRUNCATE', sql: 'truncate library.authors', expect: refused(/not allowed/) },
  { name: 'GRANT', sql: 'grant select on library.authors to public', expect: refused(/not allowed/) },
  { name: 'a refused statement refuses the whole string', sql: 'select 1; select * from pg_stats', expect: refused(/pg_stats/), simpleOnly: true },
];

let db: Awaited<ReturnType<typeof createDatabase>>;
let p: TestProxy;
let client: pg.Client;

before(async () => {
  db = await createDatabase('dp_bypass');
  const admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
  await admin.query(`
    CREATE VIEW library.authors_v AS SELECT * FROM library.authors;
    CREATE MATERIALIZED VIEW library.authors_mv AS SELECT * FROM library.authors;
    CREATE TABLE library.authors_child () INHERITS (library.authors);
    INSERT INTO library.authors_child (id, firstname, lastname, salary, public_figure) VALUES (7, 'Zelda', 'Child', 1, false);
    INSERT INTO library.books VALUES (7, 3, 'A Secret Book', 2020);
    CREATE FUNCTION public.leak_authors() RETURNS SETOF library.authors LANGUAGE sql AS 'SELECT * FROM library.authors';
    ANALYZE library.authors;`);
  await admin.end();
  p = await startTestProxy(db.url, { policies: [SEED_POLICY] });
  client = new pg.Client({ connectionString: p.conn() });
  await client.connect();
});
after(async () => {
  await client.end();
  await p.stop();
  await db.drop();
});

async function viaPsql(sql: string): Promise<{ out?: string; code?: string; message?: string }> {
  try {
    return { out: await psql(p.conn(), sql, ['-q', '-v', 'VERBOSITY=verbose']) };
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? '';
    const m = /ERROR:\s+([0-9A-Z]{5}):\s+(.*)/.exec(stderr);
    return { code: m?.[1], message: m?.[2] ?? stderr };
  }
}

async function viaExtended(sql: string): Promise<{ out?: string; code?: string; message?: string }> {
  try {
    const r = await client.query({ text: sql, rowMode: 'array' });
    return { out: r.rows.map((row: unknown[]) => row.map((v) => (v === null ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v))).join('|')).join('\n') };
  } catch (err) {
    const e = err as { code?: string; message: string };
    return { code: e.code, message: e.message };
  }
}

function check(c: Case, r: { out?: string; code?: string; message?: string }, how: string): void {
  const all = `${r.out ?? ''} ${r.message ?? ''}`;
  assert.deepEqual(rawIn(all), [], `${how}: raw values in ${JSON.stringify(all).slice(0, 400)}`);
  if ('refused' in c.expect) {
    assert.equal(r.code, '42501', `${how}: expected a refusal, got ${JSON.stringify(r).slice(0, 300)}`);
    assert.match(r.message ?? '', c.expect.refused);
  } else if ('error' in c.expect) {
    assert.equal(r.code, c.expect.error, `${how}: ${JSON.stringify(r).slice(0, 300)}`);
  } else {
    assert.equal(r.code, undefined, `${how}: unexpected error ${r.message}`);
    c.expect.rows(r.out!.trim());
  }
}

describe('bypass suite: masked data or a refusal, never raw values', () => {
  for (const c of CASES) {
    test(c.name, async () => {
      check(c, await viaPsql(c.sql), 'psql');
      if (!c.simpleOnly) check(c, await viaExtended(c.sql), 'extended');
    });
  }

  test('start-up options cannot set search_path', async () => {
    const conn = p.conn() + '&options=' + encodeURIComponent('-c search_path=library');
    const r = await psql(conn, 'select * from authors').then((out) => ({ out }), (err: { stderr?: string }) => ({ err: err.stderr ?? '' }));
    assert.ok('err' in r && /unknown/.test(r.err), JSON.stringify(r));
  });

  test('every refusal is a FAILURE policy.resolution event', async () => {
    const events = await p.events();
    const failures = events.filter((e) => e.header.event.action === 'policy.resolution' && e.header.status.outcome === 'FAILURE');
    assert.ok(failures.length >= CASES.filter((c) => 'refused' in c.expect).length);
    assert.ok(failures.every((e) => typeof (e.header.status.reason as { message?: string }).message === 'string'));
  });
});
