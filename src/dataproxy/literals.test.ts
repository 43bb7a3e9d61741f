import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fillTemplate, templateOf } from './literals.ts';

test('literals become parameters and go back in place', () => {
  const t = templateOf("SELECT abalance FROM pgbench_accounts WHERE aid = 4711 and x = 'it''s' and y > 1.5");
  assert.deepEqual(t, { text: 'SELECT abalance FROM pgbench_accounts WHERE aid = $9001 and x = $9002 and y > $9003', literals: ['4711', "'it''s'", '1.5'] });
  assert.equal(fillTemplate('SELECT x WHERE aid = $9001 AND x = $9002 AND y > $9003', t!.literals), "SELECT x WHERE aid = 4711 AND x = 'it''s' AND y > 1.5");
});

test('identifiers with digits and quoted identifiers are not literals', () => {
  assert.deepEqual(templateOf('select t1.c2 from "we\'ird""1" t1 where a = 3'), { text: 'select t1.c2 from "we\'ird""1" t1 where a = $9001', literals: ['3'] });
});

test('anything the scanner does not own takes the full path', () => {
  for (const sql of ["select E'a\\\\b'", 'select $1', "select $$x$$", 'select 1 -- c', 'select /* c */ 1', "select 'a'\n'b'", 'select 1e5', 'select 0x1F',
    'select 1_000', "select U&'x'", "select B'101'", 'select .5', 'select 1', 'select a from t']) {
    if (sql === 'select 1') {
      assert.ok(templateOf(sql));
      continue;
    }
    assert.equal(templateOf(sql), undefined, sql);
  }
});

test('a rewritten text that lost a parameter is not filled; a repeated one is filled twice', () => {
  assert.equal(fillTemplate('select $9001, $9001', ['1']), 'select 1, 1');
  assert.equal(fillTemplate('select 1', ['1']), undefined);
});
