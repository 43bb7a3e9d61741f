import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { canonicalJson, leafHash, openCheckpoint, parseVerifierKey, verifyConsistency, verifyInclusion } from '../../src/ledger/index.ts';
import { ADMIN, entry, startTestStore, type TestStore } from '../helpers/store.ts';

describe('HTTP API', () => {
  let store: TestStore;
  let readerA: string;
  let writerA: string;
  let readerB: string;
  let writerB: string;

  before(async () => {
    store = await startTestStore();
    const token = async (role: string, organization: string) => {
      const res = await store.call('/v1/tokens', ADMIN, { method: 'POST', body: JSON.stringify({ role, organization }) });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      return res.body.token as string;
    };
    readerA = await token('reader', 'org-a');
    writerA = await token('writer', 'org-a');
    readerB = await token('reader', 'org-b');
    writerB = await token('writer', 'org-b');
  });
  after(() => store.close());

  it('answers /healthz without a token and refuses every other route without one', async () => {
    assert.equal((await store.call('/healthz', undefined)).status, 200);
    for (const path of ['/metrics', '/v1/checkpoint', '/v1/publickey']) {
      const res = await store.call(path, undefined);
      assert.equal(res.status, 401, path);
      assert.equal(res.body.error.code, 'UNAUTHENTICATED');
    }
    assert.equal((await store.call('/metrics', 'cst_not_a_token')).status, 401);
  });

  it('writes, then lists what it wrote (read-your-writes), newest first by default', async () => {
    const res = await store.write(writerA, [entry(1), entry(2), entry(3)]);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual({ written: res.body.written, org: res.body.organization }, { written: 3, org: 'org-a' });
    const listed = await store.list(readerA, { filter: 'jsonPayload.n >= 2' });
    assert.equal(listed.status, 200, JSON.stringify(listed.body));
    assert.deepEqual(listed.body.entries.map((e: { insertId: string }) => e.insertId), ['e-3', 'e-2']);
    assert.equal(listed.body.entries[0].organization, 'org-a');
  });

  it('does not store a retried batch twice (same insertIds)', async () => {
    const batch = [entry(10), entry(11)];
    assert.equal((await store.write(writerA, batch)).body.written, 2);
    const retry = await store.write(writerA, batch);
    assert.deepEqual({ written: retry.body.written, duplicates: retry.body.duplicates }, { written: 0, duplicates: 2 });
    const listed = await store.list(readerA, { filter: 'insertId="e-10" OR insertId="e-11"' });
    assert.equal(listed.body.entries.length, 2);
  });

  it('keeps organizations apart: entries, checkpoints, proofs and metrics labels', async () => {
    await store.write(writerB, [entry(100, { jsonPayload: { message: 'secret of b' } })]);
    const seenByA = await store.list(readerA, { filter: '"secret of b"' });
    assert.equal(seenByA.body.entries.length, 0);
    const seenByB = await store.list(readerB, { filter: '"secret of b"' });
    assert.equal(seenByB.body.entries.length, 1);
    assert.equal((await store.list(readerA, { organization: 'org-b' })).status, 403);
    assert.equal((await store.list(readerA, { resourceNames: ['organizations/org-b'] })).status, 403);
    assert.equal((await store.call('/v1/checkpoint?org=org-b', readerA)).status, 403);
    assert.equal((await store.call('/v1/proof/inclusion?org=org-b&index=0', readerA)).status, 403);
    const metrics = await store.call('/metrics', readerA);
    assert.equal(metrics.status, 200);
    assert.match(metrics.body, /org="org-a"/);
    assert.doesNotMatch(metrics.body, /org-b/);
    assert.match((await store.call('/metrics', ADMIN)).body, /org="org-b"/);
  });

  it('lets an admin write to and read from a named organization, default "default"', async () => {
    const res = await store.write(ADMIN, [entry(200)], '?organization=org-c');
    assert.equal(res.body.organization, 'org-c');
    assert.equal((await store.list(ADMIN, { organization: 'org-c' })).body.entries.length, 1);
    assert.equal((await store.write(ADMIN, [entry(201)])).body.organization, 'default');
  });

  it('refuses wrong roles', async () => {
    assert.equal((await store.write(readerA, [entry(300)])).status, 403);
    assert.equal((await store.call('/v1/tokens', writerA, { method: 'POST', body: '{}' })).status, 403);
  });

  it('rejects a bad batch whole, naming each bad line, and stores none of it', async () => {
    const before = (await store.list(readerA, { pageSize: 1000 })).body.entries.length;
    const res = await store.write(writerA, [entry(400), '{"logName": "projects/test/logs/app", "jsonPayload": ', entry(401, { severity: 'LOUD' })]);
    assert.equal(res.status, 400);
    assert.equal(res.body.error.code, 'INVALID_ENTRIES');
    assert.deepEqual(res.body.error.errors.map((e: { line: number }) => e.line), [2, 3]);
    assert.equal(res.body.error.errors[1].field, 'severity');
    const afterList = (await store.list(readerA, { pageSize: 1000 })).body.entries.length;
    assert.equal(afterList, before);
  });

  it('answers 413 for an entry over 256 KiB and for a body over the request limit', async () => {
    const big = await store.write(writerA, [entry(500, { jsonPayload: { blob: 'x'.repeat(257 * 1024) } })]);
    assert.equal(big.status, 413);
    assert.equal(big.body.error.code, 'ENTRY_TOO_LARGE');
    const small = await startTestStore({ limits: { maxEntryBytes: 262144, maxRequestBytes: 4096, maxDepth: 64 } });
    try {
      const res = await small.write(ADMIN, Array.from({ length: 50 }, (_, i) => entry(i)));
      assert.equal(res.status, 413);
      assert.equal(res.body.error.code, 'REQUEST_TOO_LARGE');
    } finally {
      await small.close();
    }
  });

  it('explains a bad filter with its line and column', async () => {
    const res = await store.list(readerA, { filter: 'jsonPayload.a = "x" AND (b = "y"' });
    assert.equal(res.status, 400);
    assert.equal(res.body.error.code, 'INVALID_FILTER');
    assert.equal(res.body.error.line, 1);
    assert.equal(typeof res.body.error.column, 'number');
  });

  it('refuses a forged page token with a 400 (an error raised on the index thread keeps its kind)', async () => {
    const res = await store.list(readerA, { pageToken: 'bm90LWEtdG9rZW4' });
    assert.equal(res.status, 400, JSON.stringify(res.body));
    assert.equal(res.body.error.code, 'INVALID_FILTER');
    assert.equal(res.body.error.reason, 'BAD_PAGE_TOKEN');
  });

  it('pages with pageToken, oldest first on request', async () => {
    await store.write(writerA, Array.from({ length: 25 }, (_, i) => entry(1000 + i, { logName: 'projects/test/logs/paged' })));
    const seen: string[] = [];
    let pageToken: string | undefined;
    do {
      const res = await store.list(readerA, { filter: 'logName="projects/test/logs/paged"', orderBy: 'timestamp asc', pageSize: 10, pageToken });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      seen.push(...res.body.entries.map((e: { insertId: string }) => e.insertId));
      pageToken = res.body.nextPageToken;
    } while (pageToken);
    assert.deepEqual(seen, Array.from({ length: 25 }, (_, i) => `e-${1000 + i}`));
  });

  it('serves a signed checkpoint and the public key', async () => {
    const checkpoint = await store.call('/v1/checkpoint?org=org-a', readerA);
    assert.equal(checkpoint.status, 200);
    const [origin, size, root, blank, signature] = String(checkpoint.body).split('\n');
    assert.match(origin!, /org-a/);
    assert.match(size!, /^\d+$/);
    assert.match(root!, /^[A-Za-z0-9+/]{43}=$/);
    assert.equal(blank, '');
    assert.match(signature!, /^— \S+ [A-Za-z0-9+/]+=*$/);
    const key = await store.call('/v1/publickey', readerA);
    assert.match(String(key.body), /^\S+\+[0-9a-f]{8}\+[A-Za-z0-9+/]+=*\n$/);
  });

  it('streams live entries that match a filter, and only its own organization\'s (custos tail)', async () => {
    const controller = new AbortController();
    const res = await fetch(`${store.server.url}/v1/entries:tail?filter=${encodeURIComponent('jsonPayload.n >= 700')}`, {
      headers: { authorization: `Bearer ${readerA}` },
      signal: controller.signal,
    });
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    await reader.read(); // the first newline: subscribed
    await store.write(writerB, [entry(701)]);
    await store.write(writerA, [entry(699), entry(702)]);
    let text = '';
    const decoder = new TextDecoder();
    while (!text.includes('e-702')) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    controller.abort();
    const ids = text.split('\n').filter((l) => l.trim()).map((l) => (JSON.parse(l) as { insertId: string }).insertId);
    assert.deepEqual(ids, ['e-702']);
  });

  it('proves that a listed entry is in the signed log, and that the log only grew', async () => {
    const first = await store.write(ADMIN, [entry(800), entry(801), entry(802)], '?organization=proofs');
    assert.equal(first.body.firstIndex, 0);
    const key = parseVerifierKey(String((await store.call('/v1/publickey', ADMIN)).body));
    const before = openCheckpoint(String((await store.call('/v1/checkpoint?org=proofs', ADMIN)).body), key);
    await store.write(ADMIN, [entry(803), entry(804)], '?organization=proofs');
    const after = openCheckpoint(String((await store.call('/v1/checkpoint?org=proofs', ADMIN)).body), key);
    assert.equal(after.treeSize, 5);

    const listed = await store.list(ADMIN, { organization: 'proofs', filter: 'insertId="e-801"' });
    const stored = listed.body.entries[0];
    const proof = (await store.call(`/v1/proof/inclusion?org=proofs&index=1&treeSize=${after.treeSize}`, ADMIN)).body;
    const leaf = leafHash(Buffer.from(canonicalJson(stored)));
    assert.ok(verifyInclusion(1, after.treeSize, leaf, proof.hashes, after.rootHash), 'inclusion proof does not verify');
    const tampered = leafHash(Buffer.from(canonicalJson({ ...stored, severity: 'DEBUG' })));
    assert.ok(!verifyInclusion(1, after.treeSize, tampered, proof.hashes, after.rootHash), 'a changed entry must not verify');

    const consistency = (await store.call(`/v1/proof/consistency?org=proofs&from=${before.treeSize}&to=${after.treeSize}`, ADMIN)).body;
    assert.ok(verifyConsistency(before.treeSize, after.treeSize, consistency.hashes, before.rootHash, after.rootHash));
  });

  it('rejects a non-admin token naming another organization in a write', async () => {
    const res = await store.write(writerA, [entry(600)], '?organization=org-b');
    assert.equal(res.status, 403);
  });
});
