import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { LogEntry } from '../model/index.ts';
import { QueryError } from '../query/index.ts';
import { EntryIndex, IndexError, MAX_PAGE_SIZE } from './index.ts';

function entry(i: number, org = 'acme', second = i): LogEntry {
  const timestamp = new Date(Date.UTC(2024, 0, 1) + second * 1000).toISOString();
  return {
    insertId: `e${i}`, logName: `projects/p/logs/${i % 2 ? 'policy-action' : 'audit'}`, timestamp, receiveTimestamp: timestamp,
    severity: 'INFO', resource: { type: 'k8s_node', labels: {} }, labels: {}, categories: [], organization: org,
    jsonPayload: { n: i, parity: i % 2 ? 'odd' : 'even' },
  };
}
const rows = (from: number, to: number, org = 'acme') =>
  Array.from({ length: to - from }, (_, k) => ({ index: from + k, entry: entry(from + k, org) }));
const ids = (entries: LogEntry[]) => entries.map((e) => e.insertId);

async function pageAll(index: EntryIndex, request: Parameters<EntryIndex['list']>[0]): Promise<string[]> {
  const out: string[] = [];
  let pageToken: string | undefined;
  for (let pages = 0; pages < 1000; pages++) {
    const page = await index.list({ ...request, ...(pageToken ? { pageToken } : {}) });
    out.push(...ids(page.entries));
    pageToken = page.nextPageToken;
    if (!pageToken) return out;
  }
  throw new Error('pagination did not end');
}

describe('EntryIndex', () => {
  let index: EntryIndex;
  before(async () => {
    index = await EntryIndex.open(':memory:');
    await index.insert('acme', rows(0, 25));
    await index.insert('other', rows(0, 3, 'other'));
  });
  after(() => index.close());

  it('orders by timestamp desc by default, asc on request, and pages through everything once', async () => {
    const desc = await pageAll(index, { organization: 'acme', pageSize: 4 });
    assert.deepEqual(desc, Array.from({ length: 25 }, (_, k) => `e${24 - k}`));
    const asc = await pageAll(index, { organization: 'acme', pageSize: 7, orderBy: 'timestamp asc' });
    assert.deepEqual(asc, Array.from({ length: 25 }, (_, k) => `e${k}`));
  });

  it('defaults to 50 per page and caps the page size at 1000', async () => {
    const big = await EntryIndex.open(':memory:');
    try {
      await big.insert('acme', rows(0, MAX_PAGE_SIZE + 5));
      assert.equal((await big.list({ organization: 'acme' })).entries.length, 50);
      const capped = await big.list({ organization: 'acme', pageSize: 5000 });
      assert.equal(capped.entries.length, MAX_PAGE_SIZE);
      assert.ok(capped.nextPageToken);
    } finally {
      await big.close();
    }
  });

  it('keeps one organization out of another', async () => {
    assert.deepEqual(ids((await index.list({ organization: 'other', pageSize: 100 })).entries), ['e2', 'e1', 'e0']);
    assert.equal((await index.list({ organization: 'nobody' })).entries.length, 0);
  });

  it('applies the filter, logName prefixes and since', async () => {
    const odd = await pageAll(index, { organization: 'acme', filter: 'jsonPayload.parity = ODD jsonPayload.n < 7', pageSize: 2 });
    assert.deepEqual(odd, ['e5', 'e3', 'e1']);
    const audit = await index.list({ organization: 'acme', logNamePrefixes: ['projects/p/logs/AUDIT'], since: '2024-01-01T00:00:20Z', pageSize: 100 });
    assert.deepEqual(ids(audit.entries), ['e24', 'e22', 'e20']);
  });

  it('keeps pages stable while entries arrive', async () => {
    const live = await EntryIndex.open(':memory:');
    try {
      await live.insert('acme', rows(0, 10));
      const first = await live.list({ organization: 'acme', pageSize: 4 });
      await live.insert('acme', rows(10, 20)); // newer entries land before the first page, not inside the next
      const second = await live.list({ organization: 'acme', pageSize: 4, pageToken: first.nextPageToken! });
      assert.deepEqual(ids(first.entries), ['e9', 'e8', 'e7', 'e6']);
      assert.deepEqual(ids(second.entries), ['e5', 'e4', 'e3', 'e2']);
    } finally {
      await live.close();
    }
  });

  it('refuses page tokens that are forged or belong to another query', async () => {
    const first = await index.list({ organization: 'acme', pageSize: 2, filter: 'jsonPayload.parity = odd' });
    const token = first.nextPageToken!;
    const refusals: Parameters<EntryIndex['list']>[0][] = [
      { organization: 'acme', pageToken: 'not a token!' },
      { organization: 'acme', pageToken: Buffer.from('{"v":1}').toString('base64url') },
      { organization: 'acme', pageToken: token }, // different filter
      { organization: 'other', pageToken: token, filter: 'jsonPayload.parity = odd' },
      { organization: 'acme', pageToken: token, filter: 'jsonPayload.parity = odd', orderBy: 'timestamp asc' },
    ];
    for (const request of refusals) {
      await assert.rejects(index.list(request), (e: unknown) => e instanceof QueryError && e.code === 'BAD_PAGE_TOKEN');
    }
    await assert.rejects(index.list({ organization: 'acme', filter: 'jsonPayload.a = (' }), (e: unknown) => e instanceof QueryError);
  });

  it('is idempotent for entries already indexed and reports where catch-up starts', async () => {
    const fresh = await EntryIndex.open(':memory:');
    try {
      assert.equal(await fresh.indexedSize('acme'), 0);
      await fresh.insert('acme', rows(0, 5));
      await fresh.insert('acme', rows(3, 8)); // 3 and 4 again
      await fresh.insert('acme', [...rows(8, 9), ...rows(8, 9)]); // a duplicate inside one batch
      assert.equal(await fresh.indexedSize('acme'), 9);
      assert.equal((await fresh.list({ organization: 'acme', pageSize: 100 })).entries.length, 9);
      await assert.rejects(fresh.insert('acme', rows(10, 12)), (e: unknown) => e instanceof IndexError && e.code === 'INDEX_GAP');
      await fresh.insert('acme', rows(9, 12)); // nothing of the refused batch was stored
      assert.equal(await fresh.indexedSize('acme'), 12);
      await fresh.clear('acme');
      assert.equal(await fresh.indexedSize('acme'), 0);
    } finally {
      await fresh.close();
    }
  });

  it('persists in a file and is rebuilt from scratch by clear()', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'custos-index-'));
    try {
      const path = join(dir, 'index.duckdb');
      const first = await EntryIndex.open(path);
      await first.insert('acme', rows(0, 6));
      await first.insert('b', rows(0, 2, 'b'));
      await first.close();
      const reopened = await EntryIndex.open(path);
      assert.equal(await reopened.indexedSize('acme'), 6);
      assert.equal(await reopened.indexedSize('b'), 2);
      await reopened.clear();
      assert.equal(await reopened.indexedSize('acme'), 0);
      assert.equal((await reopened.list({ organization: 'b' })).entries.length, 0);
      await reopened.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('returns entries exactly as inserted, from the JSON text the caller passes when it has one', async () => {
    const [got] = (await index.list({ organization: 'acme', filter: 'insertId = e7' })).entries;
    assert.deepEqual(got, entry(7));
    const withText = await EntryIndex.open(':memory:');
    try {
      const canonical = JSON.stringify(Object.fromEntries(Object.entries(entry(3)).sort(([a], [b]) => a.localeCompare(b))));
      await withText.insert('acme', [{ index: 0, entry: entry(3), json: canonical }]);
      const [row] = (await withText.list({ organization: 'acme', filter: 'jsonPayload.n = 3' })).entries;
      assert.deepEqual(row, JSON.parse(canonical));
    } finally {
      await withText.close();
    }
  });
});

describe('EntryIndex on a full disk', () => {
  it('a commit the disk refuses is reported, nothing half-counted, and the same rows go in once space returns', async (t) => {
    const { execFileSync } = await import('node:child_process');
    const { writeFileSync } = await import('node:fs');
    const mountPoint = mkdtempSync(join(tmpdir(), 'custos-index-full-'));
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mountPoint], { stdio: 'ignore' });
    } catch {
      rmSync(mountPoint, { recursive: true, force: true });
      t.skip('cannot mount a tmpfs here (needs root)');
      return;
    }
    let full: EntryIndex | undefined;
    try {
      full = await EntryIndex.open(join(mountPoint, 'index.duckdb'));
      await full.insert('acme', rows(0, 10));
      assert.deepEqual(ids((await full.list({ organization: 'acme', orderBy: 'timestamp asc' })).entries), ids(rows(0, 10).map((r) => r.entry)));
      const filler = join(mountPoint, 'filler');
      for (let i = 0; ; i++) {
        try {
          writeFileSync(`${filler}-${i}`, Buffer.alloc(64 * 1024));
        } catch {
          break; // the disk is full
        }
      }
      // Rows gather in memory; the commit before the read is what the disk refuses.
      await full.insert('acme', rows(10, 3000).map((r) => ({ ...r, entry: { ...r.entry, jsonPayload: { pad: 'p'.repeat(2000) } } })));
      await assert.rejects(full.list({ organization: 'acme' }), (e: unknown) => e instanceof IndexError && e.code === 'INDEX_UNCOMMITTED');
      assert.equal(await full.indexedSize('acme'), 10, 'the refused rows do not count as indexed');
      execFileSync('sh', ['-c', `rm -f ${filler}-*`]);
      await full.insert('acme', rows(10, 3000));
      const listed = await full.list({ organization: 'acme', pageSize: 1000, orderBy: 'timestamp asc' });
      assert.equal(listed.entries.length, 1000);
      assert.equal(await full.indexedSize('acme'), 3000);
    } finally {
      await full?.close();
      execFileSync('umount', [mountPoint], { stdio: 'ignore' });
      rmSync(mountPoint, { recursive: true, force: true });
    }
  });
});
