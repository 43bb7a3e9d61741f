import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { LogEntry } from '../../src/model/index.ts';
import { canonicalForm, compilePredicate, compileSql, parseFilter, QueryError } from '../../src/query/index.ts';

const entries = JSON.parse(readFileSync(new URL('../fixtures/query/entries.json', import.meta.url), 'utf8')) as LogEntry[];

/** Well-formed filters the mutations start from. */
const SEEDS = [
  'resource.type="k8s_node"\nresource.labels.location="us-central1-c"\nlogName="projects/P/logs/policy-action"',
  'timestamp>="2020-06-22T06:30:51.128Z" timestamp<="2020-06-23T06:30:51.128Z"',
  'jsonPayload.dest.pod_name=~"redis" jsonPayload.dest.pod_namespace="default"',
  'jsonPayload.dest.instance != "" OR NOT jsonPayload.policies.name:*',
  'resource.type = ("k8s_node" OR "k8s_pod") -severity>=WARNING',
  'SEARCH(jsonPayload, "a b") ip_in_net(jsonPayload.connection.src_ip, "10.0.0.0/8") sample(insertId, 0.5) log_id("x")',
  'labels."k8s.io/app":* jsonPayload.count > -3.5e2 -- comment',
];
/** Fragments of the grammar to splice in: operators, keywords, quotes, escapes, brackets. */
const FRAGMENTS = ['(', ')', '"', "'", '\\', '\\u12', '=', '!=', '=~', '!~', ':', ':*', '<=', '>', '.', ',', '-', '--', 'AND', 'OR', 'NOT',
  ' ', '\n', 'NULL_VALUE', 'SEARCH(', 'ip_in_net(', 'sample(', 'log_id(', 'jsonPayload.', '.0.', '*', '"(a*)*b"', '"(?i)x"', '"\\x{10FFFF}"', '\u0000', '\uD800', '🙂'];

function mutate(base: string, edits: { at: number; drop: number; insert: string }[]): string {
  let text = base;
  for (const { at, drop, insert } of edits) {
    const i = at % (text.length + 1);
    text = text.slice(0, i) + insert + text.slice(i + drop);
  }
  return text;
}

/** Parses and, when the filter is accepted, runs every back end once: nothing may throw but a QueryError. */
function exercise(text: string): void {
  let filter;
  try {
    filter = parseFilter(text);
  } catch (e) {
    if (!(e instanceof QueryError)) throw e;
    assert.ok(e.line >= 1 && e.column >= 1);
    return;
  }
  canonicalForm(filter);
  compileSql(filter);
  const predicate = compilePredicate(filter);
  for (const entry of entries) predicate(entry);
}

describe('parser fuzz', () => {
  it('random text only ever raises QueryError', () => {
    fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 200 }), exercise), { numRuns: 3000, seed: 42 });
  });

  it('random ASCII with grammar punctuation only ever raises QueryError', () => {
    const ascii = fc.string({ unit: fc.constantFrom(...'ab.=:!~<>()"\'\\-* \n0123456789ANDORT'.split('')), maxLength: 80 });
    fc.assert(fc.property(ascii, exercise), { numRuns: 3000, seed: 7 });
  });

  it('grammar-aware mutations of real filters only ever raise QueryError', () => {
    const edit = fc.record({ at: fc.nat(400), drop: fc.nat(4), insert: fc.oneof(fc.constantFrom(...FRAGMENTS), fc.string({ maxLength: 3 })) });
    fc.assert(fc.property(fc.constantFrom(...SEEDS), fc.array(edit, { minLength: 1, maxLength: 6 }), (seed, edits) => exercise(mutate(seed, edits))),
      { numRuns: 4000, seed: 11 });
  });

  it('pathological inputs stay bounded: deep nesting, long NOT chains, catastrophic-backtracking regexes', () => {
    const hostile = [
      '('.repeat(10_000),
      'NOT '.repeat(4_000) + 'a',
      '-'.repeat(1) + ' -'.repeat(9_000) + 'a',
      `jsonPayload.x =~ "(a*)*b" jsonPayload.y =~ "(a|aa)*c"`,
      `"${'\\u0041'.repeat(3_000)}"`,
      'a '.repeat(9_999),
    ];
    for (const text of hostile) exercise(text);
    const evil = compilePredicate(parseFilter('jsonPayload.s =~ "^(a|a?)+$" OR jsonPayload.s =~ "(a*)*b"'));
    const entry = { ...entries[0]!, jsonPayload: { s: `${'a'.repeat(50_000)}!` } };
    assert.equal(evil(entry), false); // RE2 is linear: this returns at once instead of backtracking for ever
  });
});
