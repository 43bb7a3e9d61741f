/**
 * Durable ingest over HTTP: NDJSON batches of 1,000 entries of ~600 bytes, several clients at once, against a
 * `custos serve` child process on a fresh data directory. Every 200 means the batch was fsynced.
 *
 *   node --import tsx bench/ingest-http.ts [--entries 500000] [--clients 8] [--seconds 60]
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { spawnServe } from '../test/helpers/store.ts';

const { values } = parseArgs({ options: { entries: { type: 'string', default: '500000' }, clients: { type: 'string', default: '8' }, seconds: { type: 'string', default: '60' } } });
const total = Number(values.entries);
const clients = Number(values.clients);
const deadline = Date.now() + Number(values.seconds) * 1000;
const TOKEN = 'cst_bench_admin';

function entryLine(i: number): string {
  return JSON.stringify({
    insertId: `bench-${i}`,
    logName: 'projects/bench/logs/network-egress',
    timestamp: new Date(Date.UTC(2026, 10, 22) + i).toISOString(),
    severity: 'INFO',
    resource: { type: 'custos_egress_proxy', labels: { proxy: 'egress-0' } },
    labels: { source: 'ri.source.sales-db', network_policy: 'ri.egress.policy.partner-api' },
    jsonPayload: {
      response_flags: i % 17 === 0 ? 'failed' : 'success',
      request_size: 517 + (i % 100),
      response_size: 4380 + (i % 1000),
      destination_port: 8443,
      duration_ms: i % 500,
      metadata: { network_policy: 'ri.egress.policy.partner-api', source: 'ri.source.sales-db', network_type: 'direct', network_resources: [] },
      destination_host: 'api.partner.test',
      destination_address: '192.0.2.10',
    },
  });
}

const dataDir = await mkdtemp(join(tmpdir(), 'custos-bench-ingest-'));
const { child, url } = await spawnServe(dataDir, { CUSTOS_ADMIN_TOKEN: TOKEN });

// Bodies are built before the clock starts so the client's own JSON work does not count against the server.
const batches: string[] = [];
for (let b = 0; b * 1000 < total; b++) batches.push(Array.from({ length: 1000 }, (_, i) => entryLine(b * 1000 + i)).join('\n') + '\n');
const avgBytes = Math.round(batches[0]!.length / 1000);

/** User + system CPU seconds of the server process so far (all its threads), from /proc. */
async function serverCpuSeconds(): Promise<number> {
  const stat = await readFile(`/proc/${child.pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

let next = 0;
let stored = 0;
const latencies: number[] = [];
const cpuBefore = await serverCpuSeconds();
const clientCpuBefore = process.cpuUsage();
const started = performance.now();
await Promise.all(
  Array.from({ length: clients }, async () => {
    while (next < batches.length && Date.now() < deadline) {
      const body = batches[next++]!;
      const t0 = performance.now();
      const res = await fetch(`${url}/v1/entries:write`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/x-ndjson' }, body });
      const result = (await res.json()) as { written: number };
      if (res.status !== 200) throw new Error(`write failed: ${res.status} ${JSON.stringify(result)}`);
      stored += result.written;
      latencies.push(performance.now() - t0);
    }
  }),
);
const seconds = (performance.now() - started) / 1000;
const serverCpu = (await serverCpuSeconds()) - cpuBefore;
const clientCpu = process.cpuUsage(clientCpuBefore);
latencies.sort((a, b) => a - b);
// The index follows the ledger on its own thread; a list call waits for it, so this is how far it trailed.
const listStarted = performance.now();
const listed = await fetch(`${url}/v1/entries:list`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ filter: `insertId="bench-${stored - 1}"` }) });
const found = ((await listed.json()) as { entries: unknown[] }).entries.length;
const indexTrail = (performance.now() - listStarted) / 1000;
const serverCpuAfterIndex = (await serverCpuSeconds()) - cpuBefore;
child.kill('SIGTERM');
await new Promise((r) => child.once('exit', r));
await rm(dataDir, { recursive: true, force: true });

const rate = Math.round(stored / seconds);
console.log('| what | figure |\n| --- | --- |');
console.log(`| entries stored durably | ${stored.toLocaleString('en-US')} (avg ${avgBytes} B/entry, ${clients} clients) |`);
console.log(`| entries/s | **${rate.toLocaleString('en-US')}** (target ≥ 50,000) |`);
console.log(`| index caught up with the last entry | ${indexTrail.toFixed(1)} s after the last acknowledgement (${found === 1 ? 'found' : 'NOT found'}) |`);
console.log(`| server CPU per entry (all threads) | ${((serverCpu / stored) * 1e6).toFixed(1)} µs until the last acknowledgement, ${((serverCpuAfterIndex / stored) * 1e6).toFixed(1)} µs with the index caught up |`);
console.log(`| client CPU per entry (this process: HTTP, sending, reading replies) | ${((clientCpu.user + clientCpu.system) / stored).toFixed(1)} µs |`);
console.log(`| batch latency p50 / p99 | ${latencies[Math.floor(latencies.length / 2)]!.toFixed(1)} ms / ${latencies[Math.floor(latencies.length * 0.99)]!.toFixed(1)} ms |`);
