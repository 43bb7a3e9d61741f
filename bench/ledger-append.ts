/**
 * The ledger's durable append path against the raw rate of writing and fsyncing the same bytes with `fs`, side by
 * side in one run. Batches of 1,000 entries of ~600 bytes; each batch is acknowledged only once fdatasync returns.
 * "ledger" includes canonical JSON (RFC 8785), SHA-256 leaf and node hashing, record framing and CRC-32.
 *
 *   node --import tsx bench/ledger-append.ts [--batches 300] [--rounds 7] [--concurrency 4]
 */
import { open, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { canonicalJson, Ledger } from '../src/ledger/index.ts';
import { sampleEntry } from '../test/fixtures/ledger/entries.ts';

const { values } = parseArgs({ options: { batches: { type: 'string', default: '300' }, rounds: { type: 'string', default: '7' }, concurrency: { type: 'string', default: '4' } } });
const BATCHES = Number(values.batches);
const ROUNDS = Number(values.rounds);
const CONCURRENCY = Number(values.concurrency);
const BATCH = 1000;

const batches = Array.from({ length: BATCHES }, (_, b) => Array.from({ length: BATCH }, (_, i) => sampleEntry(b * BATCH + i, 'bench', 225)));
const rawBatches = batches.map((batch) => Buffer.from(batch.map((entry) => canonicalJson(entry)).join('\n') + '\n'));
const entryBytes = Math.round(rawBatches[0]!.length / BATCH);

async function inDir<T>(run: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'custos-bench-ledger-'));
  try {
    return await run(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** fs baseline: the same canonical bytes appended and fdatasync'd once per batch, one batch at a time. */
const raw = () => inDir(async (dir) => {
  const file = await open(join(dir, 'raw.log'), 'a');
  const started = performance.now();
  for (const bytes of rawBatches) {
    await file.write(bytes);
    await file.datasync();
  }
  const seconds = (performance.now() - started) / 1000;
  await file.close();
  return (BATCHES * BATCH) / seconds;
});

const canonicalBatches = batches.map((batch) => batch.map((entry) => canonicalJson(entry)));

/**
 * The ledger with `inFlight` batches outstanding at a time (ingest requests arrive concurrently), either from
 * LogEntry objects (`append`, which serializes to RFC 8785 JSON) or from canonical JSON made elsewhere.
 */
const ledgerRun = (inFlight: number, fromCanonical: boolean) => inDir(async (dir) => {
  const ledger = await Ledger.open({ dir, checkpointIntervalMs: 1000 });
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: inFlight }, async () => {
    while (next < batches.length) {
      const n = next++;
      if (fromCanonical) await ledger.appendCanonical('bench', canonicalBatches[n]!);
      else await ledger.append('bench', batches[n]!);
    }
  }));
  const seconds = (performance.now() - started) / 1000;
  await ledger.close();
  return (BATCHES * BATCH) / seconds;
});

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const results = { raw: [] as number[], ledger1: [] as number[], ledgerN: [] as number[], canonical1: [] as number[], canonicalN: [] as number[] };
// Each ledger run is paired with a raw run just before it: the machine's speed drifts between runs (other work,
// the disk's cache), and a ratio taken within a pair holds where a ratio of two medians may not.
const ratios = { ledger1: [] as number[], ledgerN: [] as number[], canonical1: [] as number[], canonicalN: [] as number[] };
const paired = async (key: keyof typeof ratios, run: () => Promise<number>): Promise<void> => {
  const rawRate = await raw();
  const rate = await run();
  results.raw.push(rawRate);
  results[key].push(rate);
  ratios[key].push(rate / rawRate);
};
for (let round = 0; round < ROUNDS; round++) {
  await paired('ledger1', () => ledgerRun(1, false));
  await paired('ledgerN', () => ledgerRun(CONCURRENCY, false));
  await paired('canonical1', () => ledgerRun(1, true));
  await paired('canonicalN', () => ledgerRun(CONCURRENCY, true));
}
const row = (name: string, xs: number[], ratio?: number[]) => `| ${name} | ${Math.round(median(xs)).toLocaleString('en-US')} | ${(median(xs) * entryBytes / 1e6).toFixed(1)} | ${ratio ? `${(100 * median(ratio)).toFixed(0)} % (${(100 * Math.min(...ratio)).toFixed(0)}–${(100 * Math.max(...ratio)).toFixed(0)} %)` : '100 %'} |`;
console.log(`\n${BATCHES} batches × ${BATCH} entries of ~${entryBytes} bytes, ${ROUNDS} rounds; each ledger run paired with a raw run just before it\n`);
console.log('| path | entries/s (median) | MB/s | vs raw fs: median of the paired ratios (min–max) |');
console.log('| --- | ---: | ---: | ---: |');
console.log(row('raw fs: write + fdatasync per batch', results.raw));
console.log(row('ledger.append, 1 batch in flight', results.ledger1, ratios.ledger1));
console.log(row(`ledger.append, ${CONCURRENCY} batches in flight (group commit)`, results.ledgerN, ratios.ledgerN));
console.log(row('ledger.appendCanonical (JSON already canonical), 1 batch in flight', results.canonical1, ratios.canonical1));
console.log(row(`ledger.appendCanonical, ${CONCURRENCY} batches in flight (group commit)`, results.canonicalN, ratios.canonicalN));
