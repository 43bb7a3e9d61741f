/**
 * Where the ledger's append time goes, phase by phase, on one thread with no I/O overlap: the same 300 batches of
 * 1,000 canonical entries (~595 bytes) framed, leaf-hashed, stamped (index + CRC-32), added to the Merkle tree,
 * then also written and fdatasync'd, next to the raw write (+ fdatasync) of the same bytes. Each row adds one phase
 * to the row above it; wall and CPU time (user + system of the whole process, so GC threads count) per entry,
 * medians of `--rounds`. This explains `bench/ledger-append.ts`: on a disk whose fdatasync costs little, the ledger's
 * CPU per entry, not the disk, sets its rate.
 *
 *   node --import tsx bench/ledger-phases.ts [--rounds 5]
 */
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { canonicalJson } from '../src/ledger/index.ts';
import { MerkleTree } from '../src/ledger/merkle.ts';
import { RecordBatch } from '../src/ledger/segment.ts';
import { sampleEntry } from '../test/fixtures/ledger/entries.ts';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' } } });
const ROUNDS = Number(values.rounds);
const BATCHES = 300;
const BATCH = 1000;
const ENTRIES = BATCHES * BATCH;

const canonical = Array.from({ length: BATCHES }, (_, b) => Array.from({ length: BATCH }, (_, i) => canonicalJson(sampleEntry(b * BATCH + i, 'bench', 225))));
const rawBatches = canonical.map((batch) => Buffer.from(batch.join('\n') + '\n'));
const dir = mkdtempSync(join(tmpdir(), 'custos-bench-phases-'));
let files = 0;

interface Steps {
  hash: boolean;
  stamp: boolean;
  tree: boolean;
  write: boolean;
  sync: boolean;
}

/** The ledger's work for every batch, up to the phases asked for, in the order the ledger does it. */
function ledgerPass(steps: Steps): void {
  const fd = steps.write ? openSync(join(dir, `ledger-${files++}`), 'w') : -1;
  const tree = new MerkleTree();
  let firstIndex = 0;
  for (const entries of canonical) {
    const batch = new RecordBatch(BATCH * 1024, BATCH);
    for (const entry of entries) batch.add(entry);
    const leaves = steps.hash ? batch.leafHashes() : undefined;
    const bytes = steps.stamp ? batch.number(firstIndex) : undefined;
    firstIndex += BATCH;
    if (fd >= 0 && bytes) writeSync(fd, bytes);
    if (fd >= 0 && steps.sync) fdatasyncSync(fd);
    if (steps.tree && leaves) tree.appendLeaves(leaves, BATCH);
    batch.recycle();
  }
  if (fd >= 0) closeSync(fd);
}

function rawPass(sync: boolean): void {
  const fd = openSync(join(dir, `raw-${files++}`), 'w');
  for (const bytes of rawBatches) {
    writeSync(fd, bytes);
    if (sync) fdatasyncSync(fd);
  }
  closeSync(fd);
}

const cpuMs = (): number => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const none: Steps = { hash: false, stamp: false, tree: false, write: false, sync: false };
const rows: [string, () => void][] = [
  ['raw fs: write', () => rawPass(false)],
  ['raw fs: write + fdatasync per batch', () => rawPass(true)],
  ['ledger: framing (UTF-8 into the batch buffer)', () => ledgerPass(none)],
  ['+ leaf SHA-256', () => ledgerPass({ ...none, hash: true })],
  ['+ index and CRC-32 stamping', () => ledgerPass({ ...none, hash: true, stamp: true })],
  ['+ Merkle tree levels', () => ledgerPass({ ...none, hash: true, stamp: true, tree: true })],
  ['+ write', () => ledgerPass({ hash: true, stamp: true, tree: true, write: true, sync: false })],
  ['+ fdatasync per batch (the whole append path)', () => ledgerPass({ hash: true, stamp: true, tree: true, write: true, sync: true })],
];

try {
  const results = rows.map(() => ({ wall: [] as number[], cpu: [] as number[] }));
  rows.forEach(([, run]) => run()); // warm-up
  for (let round = 0; round < ROUNDS; round++) {
    rows.forEach(([, run], i) => {
      const cpu = cpuMs();
      const started = performance.now();
      run();
      results[i]!.wall.push(((performance.now() - started) * 1000) / ENTRIES);
      results[i]!.cpu.push(((cpuMs() - cpu) * 1000) / ENTRIES);
    });
  }
  console.log(`\n${BATCHES} batches × ${BATCH} entries of ~${Math.round(rawBatches[0]!.length / BATCH)} bytes, one thread, median of ${ROUNDS} rounds\n`);
  console.log('| phase (cumulative) | wall µs per entry | CPU µs per entry |');
  console.log('| --- | ---: | ---: |');
  rows.forEach(([name], i) => console.log(`| ${name} | ${median(results[i]!.wall).toFixed(3)} | ${median(results[i]!.cpu).toFixed(3)} |`));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
