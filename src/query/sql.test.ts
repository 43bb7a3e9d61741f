import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { compileSql, parseFilter } from './index.ts';
import { requiredLiteral } from './sql.ts';

describe('compileSql', () => {
  it('keeps every user value in parameters, never in the SQL text', () => {
    const hostile = "'; DROP TABLE entries; --";
    for (const filter of [
      `jsonPayload.x = "${hostile}"`, `jsonPayload.x =~ "${hostile}"`, `"${hostile}"`, `SEARCH("${hostile} a")`,
      `labels."${hostile}" : *`, `jsonPayload.x < "${hostile}"`, `log_id("${hostile}")`,
    ]) {
      const { sql, params } = compileSql(parseFilter(filter));
      assert.doesNotMatch(sql, /DROP/, filter);
      assert.ok(params.some((p) => typeof p === 'string' && /drop/i.test(p)), filter);
    }
  });

  it('numbers its placeholders in the order of its parameters', () => {
    const { sql, params } = compileSql(parseFilter('jsonPayload.a > 3 OR jsonPayload.b =~ "^ab" severity >= ERROR'));
    const used = [...sql.matchAll(/\$(\d+)/g)].map((m) => Number(m[1]));
    assert.deepEqual([...new Set(used)].sort((a, b) => a - b), params.map((_, i) => i + 1));
  });
});

/** [pattern, the text every match must contain, or undefined when none can be relied on]. */
const LITERALS: [string, string | undefined][] = [
  ['redis', 'redis'],
  ['^redis-[0-9]$', 'redis-'],
  ['redis?', 'redi'],
  ['ab*', undefined],
  ['abc{0,2}', 'ab'],
  ['redis|mysql', undefined],
  ['(?i)redis', undefined],
  ['[a-z]redis', undefined],
  ['\\.redis', undefined],
];

describe('requiredLiteral', () => {
  for (const [pattern, literal] of LITERALS) {
    it(`${pattern} → ${literal ?? 'none'}`, () => assert.equal(requiredLiteral(pattern), literal));
  }
});
