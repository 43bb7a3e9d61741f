import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { appendFile, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { sampleEntry } from '../../test/fixtures/ledger/entries.ts';
import { canonicalJson, Ledger, LedgerError, leafHash, openCheckpoint, parseVerifierKey, verifyConsistency, verifyDataDir, verifyInclusion } from './index.ts';
import { ledgerMetrics } from './metrics.ts';

const temporaryDirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'custos-ledger-'));
  temporaryDirs.push(dir);
  return dir;
}
after(async () => {
  for (const dir of temporaryDirs) await rm(dir, { recursive: true, force: true });
});
const code = (expected: string) => (err: unknown) => err instanceof LedgerError && err.code === expected;

async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of iterable) out.push(item);
  return out;
}

describe('Ledger', () => {
  it('appends, reads back, proves inclusion and consistency, and keeps it all across a reopen', async () => {
    const dir = await tempDir();
    const ledger = await Ledger.open({ dir, segmentMaxBytes: 4096 });
    const first = await ledger.append('acme', Array.from({ length: 10 }, (_, n) => sampleEntry(n)));
    assert.deepEqual(first, { firstIndex: 0, treeSize: 10 });
    const second = await ledger.append('acme', Array.from({ length: 15 }, (_, n) => sampleEntry(10 + n)));
    assert.deepEqual(second, { firstIndex: 10, treeSize: 25 });
    await ledger.append('beta', [sampleEntry(0, 'beta')]);
    assert.deepEqual(ledger.organizations(), ['acme', 'beta']);

    const read = await collect(ledger.read('acme', 5, 20));
    assert.deepEqual(read.map((r) => r.index), Array.from({ length: 15 }, (_, n) => 5 + n));
    assert.deepEqual(read[0]?.entry, sampleEntry(5));
    const raw = await collect(ledger.readRaw('acme', 24));
    assert.equal(raw[0]?.bytes.toString(), canonicalJson(sampleEntry(24)));

    const verifier = parseVerifierKey(ledger.verifierKey());
    const note = await ledger.checkpoint('acme');
    const checkpoint = openCheckpoint(note, verifier, 'custos/acme');
    assert.equal(checkpoint.treeSize, 25);
    const proof = ledger.inclusionProof('acme', 17);
    assert.equal(proof.treeSize, 25);
    assert.ok(verifyInclusion(17, 25, leafHash(Buffer.from(canonicalJson(sampleEntry(17)))), proof.hashes, checkpoint.rootHash));
    const consistency = ledger.consistencyProof('acme', 10, 25);
    assert.ok(verifyConsistency(10, 25, consistency.hashes, ledger.rootHash('acme', 10), checkpoint.rootHash));
    await ledger.close();
    assert.ok((await readdir(join(dir, 'orgs', 'acme', 'segments'))).length > 1, 'small segments rolled over');

    const onWorkers = await Ledger.open({ dir, openWorkers: 2 });
    assert.equal(onWorkers.rootHash('acme'), checkpoint.rootHash.toString('base64'), 'trees rebuilt on worker threads agree');
    assert.deepEqual(onWorkers.inclusionProof('acme', 17), proof);
    await onWorkers.close();
    const reopened = await Ledger.open({ dir });
    assert.equal(reopened.treeSize('acme'), 25);
    assert.equal(reopened.rootHash('acme'), checkpoint.rootHash.toString('base64'));
    assert.equal(reopened.verifierKey(), ledger.verifierKey());
    assert.deepEqual((await collect(reopened.read('acme'))).map((r) => r.entry), Array.from({ length: 25 }, (_, n) => sampleEntry(n)));
    assert.deepEqual(await reopened.append('acme', [sampleEntry(25)]), { firstIndex: 25, treeSize: 26 });
    await reopened.close();
    const report = await verifyDataDir(dir);
    assert.equal(report.ok, true, JSON.stringify(report.failure));
    assert.equal(report.entries, 27);
  });

  it('keeps the tree past 65,536 entries in spill files, proves across them, and rebuilds them at reopen', async () => {
    const dir = await tempDir();
    const ledger = await Ledger.open({ dir });
    const total = 70_000;
    for (let at = 0; at < total; at += 5000) await ledger.append('acme', Array.from({ length: 5000 }, (_, n) => sampleEntry(at + n, 'acme', 0)));
    // Reading the root brings the tree up to date (a group commit's leaves join it after the next commit's write).
    const root = ledger.rootHash('acme');
    const spillFile = join(dir, 'orgs', 'acme', 'tree', 'level-0.hashes');
    assert.equal((await stat(spillFile)).size, 65_536 * 32, 'the first full chunk of leaf hashes went to the file');
    const proofs = [3, 65_535, 65_536, 69_999].map((index) => ({ index, proof: ledger.inclusionProof('acme', index) }));
    for (const { index, proof } of proofs) {
      assert.ok(verifyInclusion(index, total, leafHash(Buffer.from(canonicalJson(sampleEntry(index, 'acme', 0)))), proof.hashes, Buffer.from(root, 'base64')), `entry ${index}`);
    }
    assert.ok(verifyConsistency(1000, total, ledger.consistencyProof('acme', 1000, total).hashes, ledger.rootHash('acme', 1000), root));
    await ledger.close();
    const reopened = await Ledger.open({ dir });
    assert.equal(reopened.rootHash('acme'), root);
    for (const { index, proof } of proofs) assert.deepEqual(reopened.inclusionProof('acme', index), proof);
    await reopened.close();
  });

  it('stores canonical JSON given by the caller as is, and refuses appends after close', async () => {
    const dir = await tempDir();
    const ledger = await Ledger.open({ dir });
    const canonical = canonicalJson(sampleEntry(7));
    await ledger.appendCanonical('acme', [canonical, Buffer.from(canonicalJson(sampleEntry(8)))]);
    assert.equal(ledger.leafHash('acme', 0), leafHash(Buffer.from(canonical)).toString('base64'));
    assert.deepEqual((await collect(ledger.read('acme'))).map((r) => r.entry), [sampleEntry(7), sampleEntry(8)]);
    await ledger.close();
    await assert.rejects(ledger.append('acme', [sampleEntry(9)]), code('CLOSED'));
  });

  it('keeps the signing key private (mode 0600) and serves a C2SP verifier key', async () => {
    const dir = await tempDir();
    const ledger = await Ledger.open({ dir });
    assert.equal((await stat(join(dir, 'signing-key.pem'))).mode & 0o777, 0o600);
    assert.match(ledger.verifierKey(), /^custos\+[0-9a-f]{8}\+A[A-Za-z0-9+/]{43}$/);
    await ledger.close();
  });

  it('coalesces concurrent appends into fewer group commits, each acknowledged with its own indexes', async () => {
    const dir = await tempDir();
    const ledger = await Ledger.open({ dir });
    const before = (await ledgerMetrics.commits.get()).values[0]?.value ?? 0;
    const results = await Promise.all(Array.from({ length: 100 }, (_, n) => ledger.append('acme', [sampleEntry(2 * n), sampleEntry(2 * n + 1)])));
    const commits = ((await ledgerMetrics.commits.get()).values[0]?.value ?? 0) - before;
    assert.ok(commits < 100, `100 concurrent appends took ${commits} commits`);
    assert.deepEqual(results.map((r) => r.firstIndex).sort((a, b) => a - b), Array.from({ length: 100 }, (_, n) => 2 * n));
    const stored = await collect(ledger.read('acme'));
    for (const result of results) {
      const pair = stored.slice(result.firstIndex, result.firstIndex + 2).map((r) => r.entry.insertId);
      assert.equal(Number(pair[1]?.slice(3)), Number(pair[0]?.slice(3)) + 1, 'one append stays contiguous');
    }
    await ledger.close();
  });

  it('writes a group commit of more appends than one writev takes (IOV_MAX 1024) completely', async () => {
    const dir = await tempDir();
    const ledger = await Ledger.open({ dir, groupCommitMs: 20 });
    const results = await Promise.all(Array.from({ length: 2500 }, (_, n) => ledger.append('acme', [sampleEntry(n)])));
    assert.equal(new Set(results.map((r) => r.firstIndex)).size, 2500);
    await ledger.close();
    const report = await verifyDataDir(dir);
    assert.equal(report.ok, true, JSON.stringify(report.failure));
    assert.equal(report.entries, 2500);
  });

  it('refuses bad organization names and entries without a canonical form', async () => {
    const dir = await tempDir();
    const ledger = await Ledger.open({ dir });
    for (const org of ['', 'Acme', '../x', '.hidden', 'a'.repeat(64), 'a/b']) {
      await assert.rejects(ledger.append(org, [sampleEntry(0)]), code('INVALID_ORG'), org);
    }
    await assert.rejects(ledger.append('acme', [{ ...sampleEntry(0), jsonPayload: { n: Number.NaN } }]), code('INVALID_ENTRY'));
    await assert.rejects(ledger.append('acme', [sampleEntry(0, 'beta')]), code('INVALID_ENTRY'), 'an entry of another organization');
    assert.equal(ledger.treeSize('acme'), 0);
    assert.throws(() => ledger.inclusionProof('acme', 0), code('INVALID_ARGUMENT'));
    await ledger.append('acme', [sampleEntry(0)]);
    assert.throws(() => ledger.inclusionProof('acme', 1), code('INVALID_ARGUMENT'));
    assert.throws(() => ledger.consistencyProof('acme', 2, 1), code('INVALID_ARGUMENT'));
    await ledger.close();
  });

  it('cuts a torn tail on restart, keeps its bytes aside, and appends after it', async () => {
    const dir = await tempDir();
    const ledger = await Ledger.open({ dir });
    await ledger.append('acme', Array.from({ length: 5 }, (_, n) => sampleEntry(n)));
    await ledger.close();
    const segmentsDir = join(dir, 'orgs', 'acme', 'segments');
    const [segment] = await readdir(segmentsDir);
    const path = join(segmentsDir, segment as string);
    const goodLength = (await stat(path)).size;
    // half a record: a header promising 500 bytes, then 40 of them
    const torn = Buffer.alloc(56);
    torn.writeUInt32BE(500, 0);
    await appendFile(path, torn);

    const report = await verifyDataDir(dir);
    assert.equal(report.ok, true, 'a torn tail past every checkpoint is only a warning');
    assert.match(report.warnings.join('\n'), /torn tail/);

    const reopened = await Ledger.open({ dir });
    assert.equal(reopened.treeSize('acme'), 5);
    assert.equal((await stat(path)).size, goodLength);
    assert.ok((await readdir(segmentsDir)).some((name) => name.includes('.torn-')), 'torn bytes kept for inspection');
    assert.deepEqual(await reopened.append('acme', [sampleEntry(5)]), { firstIndex: 5, treeSize: 6 });
    await reopened.close();
    assert.equal((await verifyDataDir(dir)).ok, true);
  });

  it('cuts a torn checkpoint line so the next checkpoint starts on a line of its own', async () => {
    const dir = await tempDir();
    const ledger = await Ledger.open({ dir });
    await ledger.append('acme', [sampleEntry(0)]);
    await ledger.close();
    await appendFile(join(dir, 'orgs', 'acme', 'checkpoints.log'), '"custos/acme\\n2\\nAAA');
    const reopened = await Ledger.open({ dir });
    await reopened.append('acme', [sampleEntry(1)]);
    await reopened.close();
    const report = await verifyDataDir(dir);
    assert.equal(report.ok, true, JSON.stringify(report.failure));
    assert.equal(report.organizations[0]?.checkpoints, 2);
  });

  it('refuses to open a log truncated below its latest checkpoint', async () => {
    const dir = await tempDir();
    const ledger = await Ledger.open({ dir });
    await ledger.append('acme', Array.from({ length: 5 }, (_, n) => sampleEntry(n)));
    await ledger.close();
    const segmentsDir = join(dir, 'orgs', 'acme', 'segments');
    const path = join(segmentsDir, (await readdir(segmentsDir))[0] as string);
    const bytes = await readFile(path);
    await writeFile(path, bytes.subarray(0, bytes.length - 10));
    await assert.rejects(Ledger.open({ dir }), code('BAD_RECORD'));
  });

  it('acknowledges only durable entries: after SIGKILL every acknowledged entry is there and verify passes', async () => {
    const dir = await tempDir();
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/ledger/append-until-killed.ts', dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    let acknowledged = -1;
    let buffered = '';
    await new Promise<void>((resolve, reject) => {
      child.on('error', reject);
      child.on('exit', () => resolve());
      child.stdout.on('data', (chunk: Buffer) => {
        buffered += chunk.toString();
        const lines = buffered.split('\n');
        buffered = lines.pop() ?? '';
        for (const line of lines) acknowledged = Math.max(acknowledged, Number(line));
        if (acknowledged >= 3000 && child.exitCode === null) child.kill('SIGKILL');
      });
    });
    assert.ok(acknowledged >= 3000, `child acknowledged ${acknowledged}`);
    const ledger = await Ledger.open({ dir });
    assert.ok(ledger.treeSize('acme') > acknowledged, `size ${ledger.treeSize('acme')} holds acknowledged index ${acknowledged}`);
    const ids = new Set<string>();
    for await (const { entry } of ledger.read('acme')) ids.add(entry.insertId);
    assert.equal(ids.size, ledger.treeSize('acme'), 'every entry stored exactly once');
    await ledger.close();
    const report = await verifyDataDir(dir);
    assert.equal(report.ok, true, JSON.stringify(report.failure));
  });

  it('rejects appends with IO_ERROR on a full disk without corrupting the log, and recovers when space returns', async (t) => {
    const mountPoint = await tempDir();
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', mountPoint]);
    if (mounted.status !== 0) {
      t.skip(`cannot mount a tmpfs here: ${mounted.stderr.toString().trim()}`);
      return;
    }
    try {
      const dir = join(mountPoint, 'data');
      await mkdir(dir);
      const ledger = await Ledger.open({ dir, checkpointIntervalMs: 60_000 });
      await ledger.append('acme', Array.from({ length: 20 }, (_, n) => sampleEntry(n)));
      // fill the rest of the file system
      const filler = join(mountPoint, 'filler');
      await writeFile(filler, Buffer.alloc(512 * 1024)).catch(() => undefined);
      const before = ledger.treeSize('acme');
      const rootBefore = ledger.rootHash('acme');
      await assert.rejects(ledger.append('acme', Array.from({ length: 200 }, (_, n) => sampleEntry(1000 + n))), code('IO_ERROR'));
      assert.equal(ledger.treeSize('acme'), before, 'tree not advanced by a failed commit');
      assert.equal(ledger.rootHash('acme'), rootBefore);
      await rm(filler);
      assert.deepEqual(await ledger.append('acme', [sampleEntry(20)]), { firstIndex: 20, treeSize: 21 });
      await ledger.close();
      const report = await verifyDataDir(dir);
      assert.equal(report.ok, true, JSON.stringify(report.failure));
      assert.equal(report.entries, 21);
    } finally {
      spawnSync('umount', [mountPoint]);
    }
  });
});
