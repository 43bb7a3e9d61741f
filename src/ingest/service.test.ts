import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { EntryIndex } from '../index/index.ts';
import { Ledger } from '../ledger/index.ts';
import type { LogEntryInput } from '../model/index.ts';
import { InsertIdWindow } from './dedupe.ts';
import { IngestService, linesOf } from './service.ts';

const dirs: string[] = [];
after(() => Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true }))));

function input(n: number): LogEntryInput {
  return {
    insertId: `e-${n}`,
    logName: 'projects/p/logs/audit',
    timestamp: new Date(Date.UTC(2026, 0, 1) + n * 1000).toISOString(),
    jsonPayload: { n, text: 'line\nfeed and "quotes"' },
  };
}

describe('ingest service', () => {
  it('remembers the most recent insertIds of every organization, forgetting the oldest first', () => {
    const window = new InsertIdWindow(3);
    for (const [org, id] of [['a', '1'], ['b', '1'], ['a', '2'], ['a', '1'], ['a', '3']] as const) window.add(org, id);
    // ('a','1') came back while remembered, so it kept its place; ('a','3') pushed out the oldest, ('a','1')
    assert.deepEqual([window.has('a', '1'), window.has('b', '1'), window.has('a', '2'), window.has('a', '3')], [false, true, true, true]);
    for (let i = 4; i < 10; i++) window.add('c', String(i));
    assert.deepEqual(['b', 'a', 'c'].map((org) => ['1', '2', '3', '7', '8', '9'].filter((id) => window.has(org, id))), [[], [], ['7', '8', '9']]);
    window.delete('c', '8');
    assert.equal(window.has('c', '8'), false);
    window.add('c', '8');
    assert.equal(window.has('c', '8'), true);
    assert.equal(window.has('c', '7'), false, 'adding 8 again took the oldest slot, 7');
  });

  it('linesOf takes lines [from, to) of line-feed-joined text', () => {
    const text = ['{"a":1}', '{"b":"x\\ny"}', '{"c":3}', '{"d":4}'].join('\n');
    assert.equal(linesOf(text, 0, 4), text);
    assert.equal(linesOf(text, 0, 1), '{"a":1}');
    assert.equal(linesOf(text, 1, 3), '{"b":"x\\ny"}\n{"c":3}');
    assert.equal(linesOf(text, 3, 4), '{"d":4}');
    assert.equal(linesOf('only', 0, 1), 'only');
  });

  it('indexes every entry of concurrent batches once, in ledger order, from the text it keeps while appending', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'custos-ingest-'));
    dirs.push(dir);
    const ledger = await Ledger.open({ dir: join(dir, 'ledger') });
    const index = await EntryIndex.open(join(dir, 'index.duckdb'));
    const service = await IngestService.open(ledger, index);
    const sizes = [1, 7, 300, 2, 41, 1000, 5];
    let n = 0;
    const batches = sizes.map((size) => Array.from({ length: size }, () => input(n++)));
    const results = await Promise.all(batches.map((batch) => service.write('acme', batch)));
    assert.equal(results.reduce((sum, r) => sum + r.written, 0), n);
    // a retried batch is not stored twice
    assert.equal((await service.write('acme', batches[2]!)).written, 0);
    const seen: number[] = [];
    let pageToken: string | undefined;
    do {
      const page = await service.list({ organization: 'acme', orderBy: 'timestamp asc', pageSize: 500, ...(pageToken ? { pageToken } : {}) });
      for (const entry of page.entries) seen.push((entry.jsonPayload as { n: number }).n);
      pageToken = page.nextPageToken;
    } while (pageToken);
    assert.deepEqual(seen, Array.from({ length: n }, (_, i) => i));
    assert.equal(await index.indexedSize('acme'), n);
    await service.close();
    await index.close();
    await ledger.close();
  });
});
