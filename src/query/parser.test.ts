import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { canonicalForm, MAX_FILTER_LENGTH, parseFilter, QueryError } from './index.ts';

/** [filter, canonical form]: the fully parenthesized reading `custos read --explain` prints. */
const CANONICAL: [string, string][] = [
  ['', ''],
  ['a AND b OR c', '("a" AND ("b" OR "c"))'],
  ['a OR b AND c', '(("a" OR "b") AND "c")'],
  ['a b OR c d', '("a" AND ("b" OR "c") AND "d")'],
  ['NOT a OR b', '(NOT "a" OR "b")'],
  ['-a', 'NOT "a"'],
  ['"a" OR NOT "b" AND NOT "c" OR "d"', '(("a" OR NOT "b") AND (NOT "c" OR "d"))'],
  ['resource.type = ("k8s_node" OR "k8s_pod")', '(resource.type = "k8s_node" OR resource.type = "k8s_pod")'],
  ['timestamp >= "2020-06-22T08:30:51.128+02:00"', 'timestamp >= "2020-06-22T06:30:51.128Z"'],
  ['severity>=warning', 'severity >= "WARNING"'],
  ['jsonPayload.header.severity < critical', 'jsonPayload.header.severity < "CRITICAL"'],
  ['labels."k8s.io/app":*', 'labels."k8s.io/app":*'],
  ['jsonPayload.x = NULL_VALUE jsonPayload.y = "NULL_VALUE"', '(jsonPayload.x = NULL_VALUE AND jsonPayload.y = "NULL_VALUE")'],
  ['jsonPayload.n > -5 jsonPayload.d = 1.5s', '(jsonPayload.n > "-5" AND jsonPayload.d = "1.5s")'],
  ['jsonPayload.m = "a\\"b\\\\c\\n\\u0041"', 'jsonPayload.m = "a\\"b\\\\c\\nA"'],
  ["jsonPayload.s = 'single'", 'jsonPayload.s = "single"'],
  ['search("x y") ip_in_net(jsonPayload.ip, "10.0.0.0/8") sample(insertId, 0.25) LOG_ID("policy-action")',
    '(SEARCH("x y") AND ip_in_net(jsonPayload.ip, "10.0.0.0/8") AND sample(insertId, 0.25) AND log_id("policy-action"))'],
  ['a -- a comment\nb', '("a" AND "b")'],
];

/** [filter, code, line, column]: every refusal names where it starts. */
const ERRORS: [string, string, number, number][] = [
  ['(a', 'UNBALANCED_PARENTHESES', 1, 1],
  ['a)', 'UNBALANCED_PARENTHESES', 1, 2],
  ['severity = (INFO OR', 'UNEXPECTED_TOKEN', 1, 20],
  ['jsonPayload.a = jsonPayload.b', 'FIELD_ON_RIGHT', 1, 17],
  ['jsonPayload.a.0.b = 1', 'ARRAY_INDEX', 1, 1],
  ['a.0.b = 1', 'ARRAY_INDEX', 1, 1],
  ['nosuch = 1', 'UNKNOWN_FIELD', 1, 1],
  ['frobnicate(insertId)', 'UNKNOWN_FUNCTION', 1, 1],
  ['jsonPayload.x =~ "a(b"', 'BAD_REGEX', 1, 18],
  ['severity = INFO\ntimestamp > "yesterday"', 'BAD_TIMESTAMP', 2, 13],
  ['timestamp > "2020-02-30T00:00:00Z"', 'BAD_TIMESTAMP', 1, 13],
  ['severity > LOUD', 'BAD_VALUE', 1, 12],
  ['jsonPayload.header.severity >= INFO', 'BAD_VALUE', 1, 32],
  ['"abc', 'UNTERMINATED_STRING', 1, 1],
  ['"a\\qb"', 'BAD_ESCAPE', 1, 3],
  ['a ! b', 'UNEXPECTED_CHARACTER', 1, 3],
  ['NOT', 'UNEXPECTED_TOKEN', 1, 4],
  ['a AND', 'UNEXPECTED_TOKEN', 1, 6],
  ['ip_in_net(jsonPayload.ip, "10.0.0.0/33")', 'BAD_ARGUMENT', 1, 27],
  ['sample(insertId, 2)', 'BAD_ARGUMENT', 1, 18],
  ['SEARCH("--")', 'BAD_ARGUMENT', 1, 8],
  ['log_id()', 'BAD_ARGUMENT', 1, 8],
  ['log_id("a") = 1', 'UNEXPECTED_TOKEN', 1, 13],
  ['('.repeat(100) + 'a' + ')'.repeat(100), 'TOO_DEEP', 1, 65],
  ['x'.repeat(MAX_FILTER_LENGTH + 1), 'TOO_LONG', 1, 1],
];

describe('parser', () => {
  for (const [filter, canonical] of CANONICAL) {
    it(`reads ${JSON.stringify(filter)} as ${canonical}`, () => {
      const parsed = parseFilter(filter);
      assert.equal(canonicalForm(parsed), canonical);
      assert.deepEqual(parseFilter(canonicalForm(parsed)), parsed, 'the canonical form parses back to the same filter');
    });
  }

  for (const [filter, code, line, column] of ERRORS) {
    it(`refuses ${JSON.stringify(filter.slice(0, 60))} with ${code} at ${line}:${column}`, () => {
      assert.throws(() => parseFilter(filter), (e: unknown) => {
        assert.ok(e instanceof QueryError);
        assert.deepEqual({ code: e.code, line: e.line, column: e.column }, { code, line, column }, e.message);
        assert.match(e.message, /line \d+, column \d+/);
        return true;
      });
    });
  }

  it('accepts a filter of exactly the maximum length', () => {
    assert.doesNotThrow(() => parseFilter(`"${'x'.repeat(MAX_FILTER_LENGTH - 2)}"`));
  });
});

describe('docs/query.md', () => {
  it('every example query parses', () => {
    const doc = readFileSync(new URL('../../docs/query.md', import.meta.url), 'utf8');
    const examples = doc.slice(doc.indexOf('## Examples'), doc.indexOf('## How it runs'));
    const blocks = [...examples.matchAll(/```\n([\s\S]*?)```/g)].flatMap((m) => m[1]!.split(/\n\s*\n/));
    assert.ok(blocks.length >= 10);
    for (const block of blocks) assert.doesNotThrow(() => parseFilter(block), block);
  });
});
