/**
 * Query language and index on N mixed entries (default 10 M): our compiled filters next to hand-written DuckDB SQL
 * for the same question, in the same run, on the same table. Also the index's ingest rate (appender, batches of
 * 10,000) and the first-page latency of `entries:list` for the equality case.
 *
 *   node --import tsx bench/query-10m.ts [--entries 10000000] [--runs 5] [--fresh]
 *
 * The data file is `.bench/query-<N>.duckdb` (gitignored); it is reused when it already holds N entries.
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { DuckDBInstance } from '@duckdb/node-api';
import { createProgress } from '../src/cli/progress.ts';
import { EntryIndex } from '../src/index/index.ts';
import type { LogEntry } from '../src/model/index.ts';
import { compileSql, indexedColumns, parseFilter } from '../src/query/index.ts';

const { values: args } = parseArgs({
  options: { entries: { type: 'string', default: '10000000' }, runs: { type: 'string', default: '5' }, fresh: { type: 'boolean', default: false } },
});
const N = Number(args.entries);
const RUNS = Math.max(1, Number(args.runs));
/** ≥ DuckDB's row-group size (122,880), so each insert writes row groups directly instead of through the WAL. */
const BATCH = 125_000;
const START = Date.UTC(2026, 0, 1);
/** Entries are spread over 30 days, in ledger (time) order, as the store writes them. */
const SPAN_MS = 30 * 24 * 3600 * 1000;
const PROJECT = 'projects/bench';

/** Deterministic PRNG (mulberry32) so every run builds the same data. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const NAMESPACES = ['default', 'payments', 'frontend', 'kube-system', 'data', 'batch', 'search', 'auth'];
const APPS = ['redis', 'postgres', 'web', 'api', 'worker', 'cache', 'ingest', 'gateway', 'ledger', 'billing'];
const POLICIES = ['allow-frontend-to-db', 'allow-green', 'allow-dns', 'allow-egress', 'deny-all', 'allow-metrics', 'allow-api'];

function makeEntry(i: number, rand: () => number, block: number): LogEntry {
  // The block covers its share of the span; the copies cover the rest.
  const timestamp = new Date(START + Math.floor((i / block) * (SPAN_MS / Math.ceil(N / block)))).toISOString();
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const base = { insertId: `b${i.toString(36)}`, timestamp, receiveTimestamp: timestamp, labels: {}, categories: [] as string[], organization: 'default' };
  const kind = rand();
  if (kind < 0.55) {
    const allow = rand() < 0.8;
    const srcNs = pick(NAMESPACES), destNs = pick(NAMESPACES), app = pick(APPS);
    const external = rand() < 0.1;
    const payload: Record<string, unknown> = {
      connection: { src_ip: `10.${i % 200}.${(i >> 8) % 250}.${i % 251}`, dest_ip: external ? `203.0.113.${i % 250}` : `10.84.${i % 250}.${(i >> 3) % 250}`, src_port: 30000 + (i % 30000), dest_port: pick([80, 443, 5432, 6379, 8080]), protocol: 'tcp', direction: rand() < 0.5 ? 'ingress' : 'egress' },
      disposition: allow ? 'allow' : 'deny',
      src: { pod_name: `${pick(APPS)}-${(i % 9973).toString(36)}`, pod_namespace: srcNs, namespace: srcNs, workload_name: `${pick(APPS)}-w`, workload_kind: 'ReplicaSet' },
      dest: external ? { instance: `203.0.113.${i % 250}` } : { pod_name: `${app}-${i % 97}`, pod_namespace: destNs, namespace: destNs, workload_name: `${app}-w`, workload_kind: 'StatefulSet' },
      count: allow ? 1 : 1 + (i % 5),
      node_name: `gke-bench-pool-${i % 40}`,
      timestamp,
    };
    if (allow) payload['policies'] = [{ name: pick(POLICIES), namespace: destNs }, ...(rand() < 0.3 ? [{ name: pick(POLICIES), namespace: 'kube-system' }] : [])];
    return { ...base, logName: `${PROJECT}/logs/policy-action`, severity: allow ? 'INFO' : 'WARNING', resource: { type: 'k8s_node', labels: { project_id: 'bench', location: 'europe-west1-b', cluster_name: `c${i % 4}`, node_name: `gke-bench-pool-${i % 40}` } }, jsonPayload: payload };
  }
  if (kind < 0.75) {
    const ok = rand() < 0.9;
    return { ...base, logName: `${PROJECT}/logs/network-egress`, severity: ok ? 'INFO' : 'ERROR', resource: { type: 'custos_egress_proxy', labels: { project_id: 'bench' } }, jsonPayload: {
      response_flags: ok ? 'success' : 'failed', request_size: Math.floor(rand() * 5000), response_size: Math.floor(rand() * 90000), destination_port: pick([443, 5432, 22]), duration_ms: Math.floor(rand() * 3000),
      metadata: { network_policy: `ri.egress.policy.${i % 50}`, source: `ri.source.${i % 300}`, network_type: rand() < 0.5 ? 'direct' : 'agent proxy', network_resources: [] },
      destination_host: `${pick(APPS)}.example${i % 100}.com`,
    } };
  }
  if (kind < 0.92) {
    const auth = rand() < 0.4;
    const table = pick(['authors', 'books', 'loans', 'members']);
    return { ...base, logName: `${PROJECT}/logs/data-proxy-audit`, severity: 'NOTICE', resource: { type: 'custos_data_proxy', labels: { project_id: 'bench' } },
      categories: auth ? ['authenticationCheck', 'userLogin'] : [], jsonPayload: {
        header: { id: `h-${i}`, event: { eventTime: timestamp, eventType: 'ACTIVITY', action: auth ? 'user.authentication' : 'policy.resolution' }, initiator: { id: `user-${i % 5000}`, typeURI: 'User', tenant: 't-1' }, observer: { id: 'target' }, status: { outcome: rand() < 0.95 ? 'SUCCESS' : 'FAILURE' }, target: { id: 'dp-1', typeURI: 'data_plane' }, severity: auth ? 'CRITICAL' : 'NORMAL' },
        attachments: [{ source: { namespace: 'dpp-proxy', pod: `dynamic-proxy-${i % 7}` }, correlationId: `c-${i}`, ...(auth ? {} : { userId: `user-${i % 5000}`, request: { query: `select * from library.${table} where id = ${i % 1000}` }, requestData: { transformations: [{ field: [{ catalog: 'acmedb', schema: 'library', table, field: 'firstname' }], singleFieldTransformation: { retain: {} } }] } }) }],
      } };
  }
  const action = pick(['dataset.delete', 'dataset.create', 'user.login', 'token.create', 'dataset.export']);
  return { ...base, logName: `${PROJECT}/logs/audit`, severity: 'NOTICE', resource: { type: 'custos_platform', labels: { project_id: 'bench' } },
    categories: [action.endsWith('delete') ? 'dataDelete' : action.endsWith('create') ? 'dataCreate' : action === 'user.login' ? 'userLogin' : 'dataExport'],
    jsonPayload: { action, outcome: 'SUCCESS', actor: { userId: `u-${i % 2000}`, username: `user${i % 2000}` }, target: { id: `ri.dataset.${i % 100000}`, type: 'dataset' } } };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/**
 * Builds the data: the first block of up to 250,000 distinct entries goes through `EntryIndex.insert` (that is the
 * measured ingest rate), then DuckDB copies the block over the rest of the 30 days, shifting every time (column
 * and text) and suffixing every insertId, so derived columns stay exactly what `indexedColumns` would produce. A
 * sample of the copies is re-derived in JS and compared.
 */
async function build(file: string): Promise<{ rate: number; cpuRate: number }> {
  rmSync(file, { force: true });
  rmSync(`${file}.wal`, { force: true });
  const block = Math.min(N, 2 * BATCH);
  const index = await EntryIndex.open(file);
  const rand = prng(160);
  const progress = createProgress('index insert', block);
  let busy = 0, cpu = 0;
  for (let from = 0; from < block; from += BATCH) {
    const rows = [];
    for (let i = from; i < Math.min(block, from + BATCH); i++) rows.push({ index: i, entry: makeEntry(i, rand, block) });
    const t0 = performance.now(), c0 = process.cpuUsage();
    await index.insert('default', rows);
    busy += performance.now() - t0;
    const c = process.cpuUsage(c0);
    cpu += (c.user + c.system) / 1000;
    progress.tick(Math.min(block, from + BATCH));
  }
  progress.finish(`${block.toLocaleString('en-US')} entries through EntryIndex.insert`);
  await index.close();

  const db = await DuckDBInstance.create(file);
  const conn = await db.connect();
  const t0 = performance.now();
  const copies = Math.ceil(N / block);
  const copying = createProgress('copy', N);
  const iso = (t: string): string => `strftime(${t}, '%Y-%m-%dT%H:%M:%S.%gZ')`;
  // One copy per statement, in time order, so the table stays sorted by ts (zone maps) without a sort.
  for (let k = 1; k < copies; k++) {
    const shift = `to_microseconds(${k * Math.floor(SPAN_MS / copies)}::BIGINT * 1000)`;
    await conn.run(`
      INSERT INTO entries
      SELECT org, idx + ${k * block}, ts + ${shift}, receive_ts + ${shift}, severity_rank, log_name, resource_type,
        insert_id || '-${k}',
        replace(replace(entry, ${iso('ts')}, ${iso(`ts + ${shift}`)}), '"insertId":"' || insert_id || '"', '"insertId":"' || insert_id || '-${k}"'),
        replace(replace(fields, ${iso('ts')}, ${iso(`ts + ${shift}`)}), 'insertId' || chr(31) || 's' || insert_id || chr(30), 'insertId' || chr(31) || 's' || insert_id || '-${k}' || chr(30)),
        replace(fields_folded, lower(${iso('ts')}), lower(${iso(`ts + ${shift}`)}))
      FROM entries
      WHERE idx < ${block} AND idx + ${k * block} < ${N}`);
    copying.tick((k + 1) * block);
  }
  await conn.run('CHECKPOINT');
  copying.finish(`copied the block to ${N.toLocaleString('en-US')} entries (${((performance.now() - t0) / 1000).toFixed(1)}s)`);
  const sample = (await conn.runAndReadAll(`SELECT entry, epoch_us(ts), fields, fields_folded FROM entries USING SAMPLE 2000 ROWS`)).getRowsJS();
  for (const [json, ts, fields, folded] of sample as [string, bigint, string, string][]) {
    const derived = indexedColumns(JSON.parse(json) as LogEntry);
    if (derived.fields !== fields || derived.fieldsFolded !== folded || derived.tsMicros !== Number(ts)) {
      throw new Error(`copied row differs from what indexedColumns derives: ${json.slice(0, 200)}`);
    }
  }
  conn.closeSync();
  db.closeSync();
  return { rate: block / (busy / 1000), cpuRate: block / (cpu / 1000) };
}

mkdirSync('.bench', { recursive: true });
const file = `.bench/query-${N}.duckdb`;
let ingest: { rate: number; cpuRate: number } | undefined;
{
  let have = 0;
  if (existsSync(file) && !args.fresh) {
    const probe = await EntryIndex.open(file);
    have = await probe.indexedSize('default');
    await probe.close();
  }
  if (have !== N) ingest = await build(file);
}

// One hour in the middle of the span; a namespace present in ~1/8 of policy-action entries.
const hourStart = new Date(START + SPAN_MS / 2).toISOString();
const hourEnd = new Date(START + SPAN_MS / 2 + 3600_000).toISOString();
const CASES: { name: string; filter: string; hand: string }[] = [
  {
    name: 'field equality + one-hour range',
    filter: `resource.type="k8s_node" jsonPayload.dest.namespace="payments" timestamp>="${hourStart}" timestamp<"${hourEnd}"`,
    hand: `ts >= TIMESTAMP '${hourStart.slice(0, 19)}' AND ts < TIMESTAMP '${hourEnd.slice(0, 19)}' AND resource_type = 'k8s_node' AND json_extract_string(entry, '$.jsonPayload.dest.namespace') = 'payments'`,
  },
  {
    name: 'regex',
    filter: 'jsonPayload.dest.pod_name=~"^redis-[0-9]$"',
    hand: `regexp_matches(json_extract_string(entry, '$.jsonPayload.dest.pod_name'), '^redis-[0-9]$')`,
  },
  {
    name: 'global text search',
    filter: '"ri.dataset.4242"',
    hand: `contains(lower(entry), 'ri.dataset.4242')`,
  },
  {
    name: 'repeated field (any element)',
    filter: 'jsonPayload.policies.name="allow-frontend-to-db"',
    hand: `list_contains(json_extract_string(entry, '$.jsonPayload.policies[*].name'), 'allow-frontend-to-db')`,
  },
];

const db = await DuckDBInstance.create(file);
const conn = await db.connect();

async function timeCount(sql: string, params: unknown[]): Promise<{ ms: number; count: number }> {
  const t0 = performance.now();
  const reader = await conn.runAndReadAll(sql, params as never);
  const ms = performance.now() - t0;
  return { ms, count: Number(reader.getRowsJS()[0]![0]) };
}

const results: string[] = [];
for (const c of CASES) {
  const compiled = compileSql(parseFilter(c.filter));
  const ours = `SELECT count(*) FROM entries WHERE org = 'default' AND ${compiled.sql}`;
  const hand = `SELECT count(*) FROM entries WHERE org = 'default' AND ${c.hand}`;
  const oursMs: number[] = [], handMs: number[] = [];
  let oursCount = -1, handCount = -1;
  for (let r = 0; r < RUNS; r++) {
    const a = await timeCount(ours, compiled.params);
    const b = await timeCount(hand, []);
    oursMs.push(a.ms);
    handMs.push(b.ms);
    oursCount = a.count;
    handCount = b.count;
  }
  const mo = median(oursMs), mh = median(handMs);
  results.push(`| ${c.name} | \`${c.filter.replace(/\|/g, '\\|')}\` | ${oursCount.toLocaleString('en-US')} | ${handCount.toLocaleString('en-US')} | ${mo.toFixed(0)} | ${mh.toFixed(0)} | ${(mo / mh).toFixed(2)}× |`);
}
conn.closeSync();
db.closeSync();

const listing = await EntryIndex.open(file);
const firstPage: number[] = [];
let pageLength = 0;
for (let r = 0; r < RUNS; r++) {
  const t0 = performance.now();
  const page = await listing.list({ organization: 'default', filter: CASES[0]!.filter, pageSize: 100 });
  firstPage.push(performance.now() - t0);
  pageLength = page.entries.length;
}
await listing.close();

console.log(`\n${N.toLocaleString('en-US')} entries (55 % policy-action, 20 % egress, 17 % data-proxy audit, 8 % platform audit), ${RUNS} runs, medians.\n`);
if (ingest) {
  console.log(`Index ingest (EntryIndex.insert into the file, appender, batches of ${BATCH.toLocaleString('en-US')}): ${Math.round(ingest.rate).toLocaleString('en-US')} entries/s wall clock, ${Math.round(ingest.cpuRate).toLocaleString('en-US')} entries per CPU-second of this process\n`);
}
console.log('| question | filter | matches (ours) | matches (hand) | ours ms | hand-written ms | ours / hand |');
console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: |');
for (const line of results) console.log(line);
console.log(`\nFirst page of ${pageLength} (entries:list, equality + one-hour range, timestamp desc): median ${median(firstPage).toFixed(1)} ms (runs: ${firstPage.map((x) => x.toFixed(0)).join(', ')})`);
