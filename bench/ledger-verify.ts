/**
 * `custos verify` throughput: builds a ledger of N entries of ~600 bytes (default 1,000,000, in 64 MiB segments)
 * and times verifyDataDir (CRC-32, index sequence, SHA-256 leaf and node hashes, root against every checkpoint),
 * beside the time it takes only to read the same segment files.
 *
 *   node --import tsx bench/ledger-verify.ts [--entries 1000000] [--rounds 3]
 */
import { mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { canonicalJson, Ledger, verifyDataDir } from '../src/ledger/index.ts';
import { digestImplementation, hashRanges } from '../src/ledger/digest.ts';
import { RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES } from '../src/ledger/segment.ts';
import { sampleEntry } from '../test/fixtures/ledger/entries.ts';

const { values } = parseArgs({ options: { entries: { type: 'string', default: '1000000' }, rounds: { type: 'string', default: '3' } } });
const ENTRIES = Number(values.entries);
const ROUNDS = Number(values.rounds);
const dir = await mkdtemp(join(tmpdir(), 'custos-bench-verify-'));

try {
  const buildStarted = performance.now();
  const ledger = await Ledger.open({ dir, checkpointIntervalMs: 1000 });
  const template = Array.from({ length: 1000 }, (_, i) => canonicalJson(sampleEntry(i, 'bench', 225)));
  for (let written = 0; written < ENTRIES; written += 1000) {
    // distinct entries without serializing again: `"id-N"` (the insertId) occurs once in each canonical form
    const batch = template.map((json, i) => json.replace(/"id-\d+"/, `"id-${written + i}"`));
    await ledger.appendCanonical('bench', batch.slice(0, Math.min(1000, ENTRIES - written)));
    if (written % 100_000 === 0) await ledger.checkpoint('bench');
  }
  await ledger.close();
  const buildSeconds = (performance.now() - buildStarted) / 1000;
  const segmentsDir = join(dir, 'orgs', 'bench', 'segments');
  const segments = (await readdir(segmentsDir)).sort();

  const readOnly = async (): Promise<number> => {
    const buffer = Buffer.allocUnsafe(8 * 1024 * 1024);
    let bytes = 0;
    const started = performance.now();
    for (const name of segments) {
      const file = await open(join(segmentsDir, name), 'r');
      for (let position = 0; ; ) {
        const { bytesRead } = await file.read(buffer, 0, buffer.length, position);
        if (bytesRead === 0) break;
        position += bytesRead;
        bytes += bytesRead;
      }
      await file.close();
    }
    void bytes;
    return ENTRIES / ((performance.now() - started) / 1000);
  };
  /** The floor: one SHA-256 per record on one thread, with the digest the ledger uses, nothing else. */
  const hashOnly = async (): Promise<number> => {
    const started = performance.now();
    for (const name of segments) {
      const bytes = await readFile(join(segmentsDir, name));
      const ranges: number[] = [];
      for (let offset = SEGMENT_HEADER_BYTES; offset < bytes.length;) {
        const end = offset + RECORD_HEADER_BYTES + bytes.readUInt32BE(offset);
        ranges.push(offset + RECORD_HEADER_BYTES, end);
        offset = end;
      }
      hashRanges(bytes, Uint32Array.from(ranges), ranges.length / 2, 0, Buffer.allocUnsafe(16 * ranges.length));
    }
    return ENTRIES / ((performance.now() - started) / 1000);
  };
  const verify = async (): Promise<number> => {
    const started = performance.now();
    const report = await verifyDataDir(dir);
    if (!report.ok || report.entries !== ENTRIES) throw new Error(`verify failed: ${JSON.stringify(report.failure)}`);
    return ENTRIES / ((performance.now() - started) / 1000);
  };
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const results = { read: [] as number[], hash: [] as number[], verify: [] as number[] };
  for (let round = 0; round < ROUNDS; round++) {
    results.read.push(await readOnly());
    results.hash.push(await hashOnly());
    results.verify.push(await verify());
  }
  console.log(`\n${ENTRIES.toLocaleString('en-US')} entries in ${segments.length} segments (built in ${buildSeconds.toFixed(1)} s), median of ${ROUNDS} rounds\n`);
  console.log('| pass over the data dir | entries/s |');
  console.log('| --- | ---: |');
  console.log(`| read the segment files only | ${Math.round(median(results.read)).toLocaleString('en-US')} |`);
  console.log(`| read + one SHA-256 per record, one thread (${digestImplementation}) | ${Math.round(median(results.hash)).toLocaleString('en-US')} |`);
  console.log(`| verifyDataDir (CRC, sequence, leaf + node SHA-256, checkpoints) | ${Math.round(median(results.verify)).toLocaleString('en-US')} |`);
} finally {
  await rm(dir, { recursive: true, force: true });
}
