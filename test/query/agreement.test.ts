import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { EntryIndex } from '../../src/index/index.ts';
import { type LogEntry, SEVERITIES } from '../../src/model/index.ts';
import { compilePredicate, parseFilter } from '../../src/query/index.ts';

/**
 * The in-memory predicate and the DuckDB SQL must agree on every filter and entry (issue 3). Values come from a
 * small vocabulary so that comparisons hit as often as they miss: mixed case, substrings, numbers as text,
 * separators and control characters the index must escape.
 */
const WORDS = ['', 'a', 'A', 'ab', 'aB', 'b', 'redis', 'REDIS-0', '10.1.2.3', '10', '3', '3.5', '-1', 'true', 'x.y', 'a b', 'é', 'É', '\u001e', '\u001fs', '\u001b', 'tab\tx', 'ß', '🙂'];
const KEYS = ['a', 'b', 'c', 'k.d'];
const SEVERITY_NAMES = [...SEVERITIES];
const AUDIT = ['NORMAL', 'WARNING', 'CRITICAL', 'warning', 'LOUD'];

const scalar = fc.oneof(
  fc.constantFrom(...WORDS),
  fc.constantFrom(0, 1, 3, 3.5, -1, 10, 1e21, -0),
  fc.boolean(),
  fc.constant(null),
);
const json: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small', withCrossShrink: true }, scalar, fc.array(tie('value'), { maxLength: 3 }), tie('object')),
  object: fc.dictionary(fc.constantFrom(...KEYS), tie('value'), { maxKeys: 3 }),
})).value;

const entry = fc.record({
  insertId: fc.constantFrom('id-a', 'ID-b', 'c'),
  logName: fc.constantFrom('projects/p/logs/policy-action', 'projects/p/logs/Audit', 'projects/q/logs/data-proxy-audit'),
  timestamp: fc.integer({ min: 0, max: 5_000 }).map((s) => new Date(Date.UTC(2024, 0, 1) + s * 1000 + (s % 7)).toISOString()),
  severity: fc.constantFrom(...SEVERITY_NAMES),
  resourceType: fc.constantFrom('k8s_node', 'K8S_Pod', 'global'),
  labels: fc.dictionary(fc.constantFrom(...KEYS), fc.constantFrom(...WORDS), { maxKeys: 2 }),
  categories: fc.array(fc.constantFrom('userLogin', 'dataDelete', 'a'), { maxLength: 2 }),
  payload: fc.dictionary(fc.constantFrom(...KEYS, 'header'), json, { maxKeys: 4 }),
  headerSeverity: fc.option(fc.constantFrom(...AUDIT)),
}).map((r): LogEntry => {
  const jsonPayload: Record<string, unknown> = { ...r.payload };
  if (r.headerSeverity !== null) jsonPayload['header'] = { severity: r.headerSeverity };
  return {
    insertId: r.insertId, logName: r.logName, timestamp: r.timestamp, receiveTimestamp: r.timestamp, severity: r.severity,
    resource: { type: r.resourceType, labels: {} }, labels: r.labels, categories: r.categories, organization: 'o', jsonPayload,
  };
});

const quote = (s: string): string => JSON.stringify(s).replace(/\\u00([0-9a-f]{2})/g, '\\u00$1');
const PLAIN_PATHS = [
  'jsonPayload.a', 'jsonPayload.b', 'jsonPayload.a.b', 'jsonPayload.a.c.a', 'jsonPayload."k.d"', 'jsonPayload.k.d', 'jsonPayload',
  'labels.a', 'labels."k.d"', 'categories', 'insertId', 'logName', 'resource.type',
];
const plainPath = fc.constantFrom(...PLAIN_PATHS);
/** Ranked fields order only by rank names (anything else is a BAD_VALUE), so they join for =, != and : only. */
const path = fc.constantFrom(...PLAIN_PATHS, 'severity', 'jsonPayload.header.severity');
const value = fc.oneof(fc.constantFrom(...WORDS).map(quote), fc.constantFrom('3', '-1', '3.5', '1e21', 'true', 'FALSE', 'NULL_VALUE', 'redis', 'A'));
const regex = fc.constantFrom('"a"', '"^a$"', '"(?i)redis"', '"[0-9]+"', '"^$"', '"\\\\."', '"é|ß"', '"b$"', '"."');
const stamp = fc.integer({ min: 0, max: 5_000 }).map((s) => quote(new Date(Date.UTC(2024, 0, 1) + s * 1000).toISOString()));

const restriction: fc.Arbitrary<string> = fc.oneof(
  fc.tuple(path, fc.constantFrom('=', '!=', ':'), value).map(([p, op, v]) => `${p} ${op} ${v}`),
  fc.tuple(plainPath, fc.constantFrom('<', '<=', '>', '>='), value).map(([p, op, v]) => `${p} ${op} ${v}`),
  fc.tuple(path, fc.constantFrom('=~', '!~'), regex).map(([p, op, r]) => `${p} ${op} ${r}`),
  fc.tuple(fc.constantFrom('<', '<=', '>', '>=', '=', '!='), stamp).map(([op, t]) => `timestamp ${op} ${t}`),
  fc.tuple(fc.constantFrom('<', '>='), fc.constantFrom(...SEVERITY_NAMES)).map(([op, s]) => `severity ${op} ${s}`),
  fc.tuple(fc.constantFrom('<', '>', '>='), fc.constantFrom('NORMAL', 'WARNING', 'critical')).map(([op, s]) => `jsonPayload.header.severity ${op} ${s}`),
  path.map((p) => `${p}:*`),
  fc.constantFrom(...WORDS).map(quote),
  fc.tuple(fc.option(path), fc.constantFrom('a', 'redis', 'a b', 'x y', 'é 10')).map(([p, t]) => (p ? `SEARCH(${p}, ${quote(t)})` : `SEARCH(${quote(t)})`)),
  fc.tuple(path, fc.constantFrom('10.0.0.0/8', '10.1.2.3/32', '::/0')).map(([p, c]) => `ip_in_net(${p}, "${c}")`),
  fc.tuple(path, fc.constantFrom('0', '0.3', '0.7', '1')).map(([p, f]) => `sample(${p}, ${f})`),
  fc.constantFrom('log_id("policy-action")', 'log_id("audit")'),
);
const filter: fc.Arbitrary<string> = fc.letrec((tie) => ({
  expr: fc.oneof({ depthSize: 'small' },
    restriction,
    fc.tuple(tie('expr'), fc.constantFrom(' AND ', ' OR ', ' ', '\n'), tie('expr')).map(([a, op, b]) => `${a}${op}${b}`),
    tie('expr').map((e) => `NOT (${e})`),
    tie('expr').map((e) => `-(${e})`),
  ),
})).expr as fc.Arbitrary<string>;

describe('predicate and DuckDB SQL agree', () => {
  let index: EntryIndex;
  before(async () => {
    index = await EntryIndex.open(':memory:');
  });
  after(() => index.close());

  it('on random filters over random entries', async () => {
    let runs = 0;
    await fc.assert(fc.asyncProperty(fc.array(entry, { minLength: 1, maxLength: 8 }), fc.array(filter, { minLength: 1, maxLength: 4 }), async (batch, filters) => {
      await index.clear();
      batch = batch.map((e, i) => ({ ...e, insertId: `${e.insertId}#${i}` }));
      await index.insert('o', batch.map((e, i) => ({ index: i, entry: e })));
      for (const text of filters) {
        runs++;
        const parsed = parseFilter(text);
        const predicate = compilePredicate(parsed);
        const expected = batch.filter(predicate).map((e) => e.insertId).sort();
        const page = await index.list({ organization: 'o', filter: text, pageSize: 1000 });
        assert.deepEqual(page.entries.map((e) => e.insertId).sort(), expected, text);
      }
    }), { numRuns: 300, seed: 2026, verbose: 1 });
    assert.ok(runs >= 300);
  });
});
