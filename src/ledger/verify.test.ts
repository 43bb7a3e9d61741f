import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { cp, mkdtemp, readdir, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { gunzipSync, gzipSync } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import { fillAndArchive, sampleEntry } from '../../test/fixtures/ledger/entries.ts';
import { canonicalJson } from './canonical.ts';
import { signCheckpoint } from './checkpoint.ts';
import { Ledger, verifyArchive, verifyDataDir, type VerifyReport } from './index.ts';
import { EMPTY_ROOT } from './merkle.ts';
import { noteSigner } from './note.ts';
import { encodeRecords, scanSegment, SEGMENT_HEADER_BYTES, RECORD_HEADER_BYTES } from './segment.ts';

const temporaryDirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'custos-verify-'));
  temporaryDirs.push(dir);
  return dir;
}
after(async () => {
  for (const dir of temporaryDirs) await rm(dir, { recursive: true, force: true });
});

const SEGMENT_MAX = 8 * 1024;
let pristine: string;
let pristineArchive: string;
let segmentNames: string[];

/** 3 appends of 40 entries to acme (several small segments, a checkpoint after each) and 5 to beta. */
before(async () => {
  pristine = await tempDir();
  pristineArchive = await tempDir();
  await fillAndArchive(await Ledger.open({ dir: pristine, segmentMaxBytes: SEGMENT_MAX, archive: { target: pristineArchive } }));
  segmentNames = (await readdir(join(pristine, 'orgs', 'acme', 'segments'))).sort();
});

async function copyOf(source: string): Promise<string> {
  const dir = await tempDir();
  await cp(source, dir, { recursive: true });
  return dir;
}

const segmentPath = (dir: string, name: string): string => join(dir, 'orgs', 'acme', 'segments', name);

/** Rewrites a segment through the real encoder (valid lengths, checksums and indexes) after changing its payloads. */
async function rewriteSegment(dir: string, name: string, change: (payloads: Buffer[]) => Buffer[]): Promise<number> {
  const path = segmentPath(dir, name);
  const bytes = await readFile(path);
  const payloads: Buffer[] = [];
  let firstIndex = -1;
  await scanSegment(path, Number(name.slice(0, 20)), (index, payload) => {
    if (firstIndex < 0) firstIndex = index;
    payloads.push(Buffer.from(payload));
  });
  await writeFile(path, Buffer.concat([bytes.subarray(0, SEGMENT_HEADER_BYTES), encodeRecords(firstIndex, change(payloads))]));
  return firstIndex;
}

/** Byte offsets of the records of a segment. */
async function recordOffsets(path: string): Promise<number[]> {
  const bytes = await readFile(path);
  const offsets: number[] = [];
  for (let offset = SEGMENT_HEADER_BYTES; offset < bytes.length; offset += RECORD_HEADER_BYTES + bytes.readUInt32BE(offset)) offsets.push(offset);
  return offsets;
}

interface TamperCase {
  name: string;
  tamper: (dir: string) => Promise<number | void>;
  code: string;
  segment?: (firstIndexOfTamperedSegment: number) => string;
  /** Expected entry index, given what `tamper` returned. */
  entryIndex?: (returned: number) => number;
}

describe('verifyDataDir', () => {
  it('passes an intact data dir and counts every entry', async () => {
    const report = await verifyDataDir(pristine);
    assert.equal(report.ok, true, JSON.stringify(report.failure));
    assert.equal(report.entries, 125);
    assert.deepEqual(report.organizations.map((o) => [o.org, o.treeSize]), [['acme', 120], ['beta', 5]]);
    assert.equal(segmentNames.length, 3, 'one segment per batch: a batch never spans segments');
  });

  it('gives the same verdicts scanning in process (no worker threads)', async () => {
    const inProcess = await verifyDataDir(pristine, { workers: 0 });
    assert.equal(inProcess.ok, true);
    assert.deepEqual(inProcess.organizations, (await verifyDataDir(pristine)).organizations);
    const dir = await copyOf(pristine);
    await unlink(segmentPath(dir, segmentNames[1] as string));
    assert.equal((await verifyDataDir(dir, { workers: 0 })).failure?.code, 'SEQUENCE_GAP');
  });

  const cases: TamperCase[] = [
    {
      name: 'a flipped byte in an entry',
      code: 'BAD_RECORD',
      tamper: async (dir) => {
        const name = segmentNames[1] as string;
        const offsets = await recordOffsets(segmentPath(dir, name));
        const bytes = await readFile(segmentPath(dir, name));
        const at = (offsets[2] as number) + RECORD_HEADER_BYTES + 30;
        bytes[at] = (bytes[at] as number) ^ 0x01;
        await writeFile(segmentPath(dir, name), bytes);
        return Number(name.slice(0, 20)) + 2;
      },
      entryIndex: (index) => index,
    },
    {
      name: 'a flipped byte with its checksum recomputed',
      code: 'ROOT_MISMATCH',
      tamper: async (dir) => rewriteSegment(dir, segmentNames[1] as string, (payloads) => {
        const changed = Buffer.from(payloads[2] as Buffer);
        changed[30] = (changed[30] as number) ^ 0x01;
        return payloads.map((p, n) => (n === 2 ? changed : p));
      }),
      entryIndex: (firstIndex) => (firstIndex + 2 >= 40 ? 40 : 0),
    },
    {
      name: 'a deleted entry',
      code: 'SEQUENCE_GAP',
      tamper: async (dir) => {
        const name = segmentNames[1] as string;
        const offsets = await recordOffsets(segmentPath(dir, name));
        const bytes = await readFile(segmentPath(dir, name));
        await writeFile(segmentPath(dir, name), Buffer.concat([bytes.subarray(0, offsets[3]), bytes.subarray(offsets[4])]));
        return Number(name.slice(0, 20)) + 3;
      },
      entryIndex: (index) => index,
    },
    {
      name: 'a deleted entry with the rest of the last segment renumbered',
      code: 'TRUNCATED_LOG',
      tamper: async (dir) => rewriteSegment(dir, segmentNames.at(-1) as string, (payloads) => payloads.filter((_, n) => n !== 1)),
      entryIndex: () => 119,
    },
    {
      name: 'reordered entries',
      code: 'SEQUENCE_GAP',
      tamper: async (dir) => {
        const name = segmentNames[0] as string;
        const offsets = await recordOffsets(segmentPath(dir, name));
        const bytes = await readFile(segmentPath(dir, name));
        const [a, b, c] = [offsets[4], offsets[5], offsets[6]] as [number, number, number];
        await writeFile(segmentPath(dir, name), Buffer.concat([bytes.subarray(0, a), bytes.subarray(b, c), bytes.subarray(a, b), bytes.subarray(c)]));
        return 4;
      },
      entryIndex: (index) => index,
    },
    {
      name: 'reordered entries with indexes rewritten',
      code: 'ROOT_MISMATCH',
      tamper: async (dir) => rewriteSegment(dir, segmentNames[0] as string, (payloads) => [payloads[1] as Buffer, payloads[0] as Buffer, ...payloads.slice(2)]),
      entryIndex: () => 0,
    },
    {
      name: 'a log truncated below a checkpoint it has seen (last segment deleted)',
      code: 'TRUNCATED_LOG',
      tamper: async (dir) => {
        const name = segmentNames.at(-1) as string;
        await unlink(segmentPath(dir, name));
        return Number(name.slice(0, 20));
      },
      entryIndex: (firstIndex) => firstIndex,
    },
    {
      name: 'a log truncated at a record boundary inside the last segment',
      code: 'TRUNCATED_LOG',
      tamper: async (dir) => {
        const name = segmentNames.at(-1) as string;
        const offsets = await recordOffsets(segmentPath(dir, name));
        const bytes = await readFile(segmentPath(dir, name));
        await writeFile(segmentPath(dir, name), bytes.subarray(0, offsets[1]));
        return Number(name.slice(0, 20)) + 1;
      },
      entryIndex: (index) => index,
    },
    {
      name: 'a segment removed from the middle',
      code: 'SEQUENCE_GAP',
      tamper: async (dir) => {
        await unlink(segmentPath(dir, segmentNames[1] as string));
        return Number((segmentNames[1] as string).slice(0, 20));
      },
      entryIndex: (index) => index,
    },
    {
      name: 'a forged checkpoint (root changed, signature kept)',
      code: 'BAD_SIGNATURE',
      tamper: async (dir) => {
        const path = join(dir, 'orgs', 'acme', 'checkpoints.log');
        const lines = (await readFile(path, 'utf8')).trimEnd().split('\n');
        const note = JSON.parse(lines.at(-1) as string) as string;
        const parts = note.split('\n');
        parts[2] = EMPTY_ROOT.toString('base64');
        lines[lines.length - 1] = JSON.stringify(parts.join('\n'));
        await writeFile(path, `${lines.join('\n')}\n`);
      },
    },
    {
      name: 'a checkpoint signed by another key',
      code: 'BAD_SIGNATURE',
      tamper: async (dir) => {
        const pem = generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
        const note = signCheckpoint({ origin: 'custos/acme', treeSize: 200, rootHash: EMPTY_ROOT }, noteSigner('custos', pem));
        await writeFile(join(dir, 'orgs', 'acme', 'checkpoints.log'), `${JSON.stringify(note)}\n`, { flag: 'a' });
      },
    },
    {
      name: 'a validly signed checkpoint whose root does not match the entries',
      code: 'ROOT_MISMATCH',
      tamper: async (dir) => {
        const pem = await readFile(join(dir, 'signing-key.pem'), 'utf8');
        const note = signCheckpoint({ origin: 'custos/acme', treeSize: 60, rootHash: EMPTY_ROOT }, noteSigner('custos', pem));
        await writeFile(join(dir, 'orgs', 'acme', 'checkpoints.log'), `${JSON.stringify(note)}\n`, { flag: 'a' });
      },
      entryIndex: () => 40,
    },
  ];

  for (const row of cases) {
    it(`catches ${row.name}: ${row.code}`, async () => {
      const dir = await copyOf(pristine);
      const returned = await row.tamper(dir);
      const report = await verifyDataDir(dir);
      assert.equal(report.ok, false, `${row.name} went unnoticed`);
      assert.equal(report.failure?.code, row.code, JSON.stringify(report.failure));
      assert.equal(report.failure?.org, 'acme');
      if (row.entryIndex) assert.equal(report.failure?.entryIndex, row.entryIndex(returned as number), JSON.stringify(report.failure));
      if (row.code !== 'BAD_SIGNATURE' && row.code !== 'TRUNCATED_LOG') assert.match(report.failure?.segment ?? '', /^\d{20}\.seg$/);
    });
  }
});

describe('archive', () => {
  const manifestsDir = (dir: string): string => join(dir, 'acme', 'manifests');

  it('holds every sealed segment compressed, with a manifest chain that verifyArchive accepts', async () => {
    const report = await verifyArchive(pristineArchive);
    assert.equal(report.ok, true, JSON.stringify(report.failure));
    assert.deepEqual(report.organizations.map((o) => [o.org, o.treeSize]), [['acme', 120], ['beta', 5]]);
    const manifests = (await readdir(manifestsDir(pristineArchive))).sort();
    assert.equal(manifests.length, segmentNames.length);
    const first = JSON.parse(await readFile(join(manifestsDir(pristineArchive), manifests[0] as string), 'utf8')) as { previousManifestSha256: unknown; checkpoint: string };
    assert.equal(first.previousManifestSha256, null);
    assert.match(first.checkpoint, /^custos\/acme\n\d+\n/);
    const data = await verifyDataDir(pristine);
    assert.equal(report.organizations[0]?.rootHash, data.organizations[0]?.rootHash, 'archive and data dir agree on the root');
  });

  const breaks: { name: string; code: string; tamper: (dir: string, manifests: string[]) => Promise<void>; namesEntry?: false }[] = [
    {
      name: 'a manifest replaced by other JSON',
      code: 'CHAIN_BROKEN',
      tamper: async (dir, manifests) => writeFile(join(manifestsDir(dir), manifests[1] as string), '{"segment":{"key":"../../etc/passwd"}}'),
      namesEntry: false,
    },
    { name: 'a manifest removed from the middle of the chain', code: 'CHAIN_BROKEN', tamper: async (dir, manifests) => unlink(join(manifestsDir(dir), manifests[1] as string)) },
    {
      name: 'a manifest whose previous-manifest hash was edited',
      code: 'CHAIN_BROKEN',
      tamper: async (dir, manifests) => {
        const path = join(manifestsDir(dir), manifests[2] as string);
        const manifest = JSON.parse(await readFile(path, 'utf8')) as { previousManifestSha256: string };
        manifest.previousManifestSha256 = '0'.repeat(64);
        await writeFile(path, canonicalJson(manifest));
      },
    },
    {
      name: 'a flipped byte in an archived segment',
      code: 'HASH_MISMATCH',
      tamper: async (dir) => {
        const path = join(dir, 'acme', 'segments', `${segmentNames[1]}.gz`);
        const bytes = await readFile(path);
        bytes[bytes.length - 12] = (bytes[bytes.length - 12] as number) ^ 0x40;
        await writeFile(path, bytes);
      },
    },
    {
      name: 'the last segment and its manifest rewritten consistently (entry changed, hashes updated)',
      code: 'ROOT_MISMATCH',
      tamper: async (dir, manifests) => {
        const manifestPath = join(manifestsDir(dir), manifests.at(-1) as string);
        const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as { segment: { key: string; sha256: string; objectSha256: string } };
        const objectPath = join(dir, manifest.segment.key);
        const segment = gunzipSync(await readFile(objectPath));
        const text = segment.toString('latin1').replace('"id-', '"ID-');
        const changed = Buffer.from(text, 'latin1');
        // keep the record checksum valid so only the Merkle root can tell
        const offset = SEGMENT_HEADER_BYTES;
        const payloadLength = changed.readUInt32BE(offset);
        const { crc32 } = await import('node:zlib');
        changed.writeUInt32BE(crc32(changed.subarray(offset + 8, offset + RECORD_HEADER_BYTES + payloadLength)), offset + 4);
        const object = gzipSync(changed);
        const { createHash } = await import('node:crypto');
        manifest.segment.sha256 = createHash('sha256').update(changed).digest('hex');
        manifest.segment.objectSha256 = createHash('sha256').update(object).digest('hex');
        await writeFile(objectPath, object);
        await writeFile(manifestPath, canonicalJson(manifest));
      },
    },
  ];
  for (const row of breaks) {
    it(`verifyArchive catches ${row.name}: ${row.code}`, async () => {
      const dir = await copyOf(pristineArchive);
      const manifests = (await readdir(manifestsDir(dir))).sort();
      await row.tamper(dir, manifests);
      const report: VerifyReport = await verifyArchive(dir);
      assert.equal(report.ok, false);
      assert.equal(report.failure?.code, row.code, JSON.stringify(report.failure));
      assert.equal(report.failure?.org, 'acme');
      if (row.namesEntry !== false) assert.equal(typeof report.failure?.entryIndex, 'number');
    });
  }

  it('seals and archives a segment within the configured bound after its first entry, without being asked', async () => {
    const dir = await tempDir();
    const bucket = await tempDir();
    const ledger = await Ledger.open({ dir, archive: { target: bucket, maxDelayMs: 200 } });
    await ledger.append('acme', [sampleEntry(0), sampleEntry(1)]);
    let report: VerifyReport | undefined;
    for (let attempt = 0; attempt < 100 && report?.entries !== 2; attempt++) {
      await sleep(50);
      report = await verifyArchive(bucket);
    }
    assert.equal(report?.ok, true, JSON.stringify(report?.failure));
    assert.equal(report?.entries, 2);
    assert.deepEqual(await ledger.append('acme', [sampleEntry(2)]), { firstIndex: 2, treeSize: 3 });
    await ledger.close();
    const reopened = await Ledger.open({ dir, archive: { target: bucket } });
    await reopened.append('acme', [sampleEntry(3)]);
    await reopened.archive({ force: true });
    await reopened.close();
    const final = await verifyArchive(bucket);
    assert.equal(final.ok, true, JSON.stringify(final.failure));
    assert.equal(final.entries, 4);
    assert.equal((await verifyDataDir(dir)).ok, true);
  });
});
