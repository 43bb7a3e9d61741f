/**
 * `custos netpol` throughput: 10,000 pods, 1,000 policies, N flows (1 M by default), rate limit off. Flows evaluated
 * and written to a file per second, next to the same run's floor: parsing the same NDJSON and writing the same number
 * of records without evaluating. Targets (issue 4): ≥ 40 % of the floor and ≥ 200,000 flows/s.
 *
 *   node --import tsx bench/netpol-throughput.ts [--flows N] [--runs R]
 */
import { createWriteStream, createReadStream, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { runNetpol, DEFAULT_SETTINGS } from '../src/netpol/index.ts';
import { parseTupleFlow, readLineBatches } from '../src/netpol/flows.ts';
import { RotatingFileWriter } from '../src/netpol/writer.ts';

const arg = (name: string, fallback: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const FLOWS = arg('flows', 1_000_000);
const RUNS = arg('runs', 3);
const PODS = 10_000;
const NAMESPACES = 100;
const POLICIES = 1_000;
const NODES = 20;
const APPS = 20;

// Deterministic pseudo-random numbers, so every run sees the same cluster and flows.
let seed = 42;
const rand = (n: number): number => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return seed % n;
};

const podIp = (i: number): string => `10.${8 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;

function manifests(): string {
  const docs: string[] = [];
  for (let n = 0; n < NAMESPACES; n++) docs.push(`apiVersion: v1\nkind: Namespace\nmetadata: {name: ns-${n}, labels: {team: t${n % 10}, env: ${n % 3 === 0 ? 'prod' : 'dev'}}}`);
  for (let n = 0; n < NODES; n++) docs.push(`apiVersion: v1\nkind: Node\nmetadata: {name: node-${n}}\nstatus: {addresses: [{type: InternalIP, address: 10.128.0.${n + 2}}]}`);
  for (let i = 0; i < PODS; i++) {
    const app = `app-${i % APPS}`;
    docs.push(`apiVersion: v1\nkind: Pod\nmetadata:\n  name: ${app}-5d4f8b7c9-p${i}\n  namespace: ns-${i % NAMESPACES}\n  labels: {app: ${app}, tier: ${i % 3 === 0 ? 'front' : 'back'}}\n  ownerReferences: [{kind: ReplicaSet, name: ${app}-5d4f8b7c9, controller: true}]\nspec:\n  nodeName: node-${i % NODES}\n  containers: [{name: c, ports: [{containerPort: 8080, name: http}, {containerPort: 9090, name: metrics}]}]\nstatus: {phase: Running, podIP: ${podIp(i)}}`);
  }
  for (let p = 0; p < POLICIES; p++) {
    const ns = `ns-${p % NAMESPACES}`;
    const app = `app-${rand(APPS)}`;
    const kind = p % 4;
    const spec =
      kind === 0 ? `podSelector: {matchLabels: {app: ${app}}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {env: prod}}, podSelector: {matchLabels: {tier: front}}}], ports: [{port: http}]}]`
      : kind === 1 ? `podSelector: {matchLabels: {app: ${app}}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: In, values: [app-1, app-2, app-3]}]}}]}]\n  egress: [{to: [{namespaceSelector: {matchLabels: {team: t${rand(10)}}}}], ports: [{port: 8000, endPort: 8100}]}, {to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}], ports: [{port: 443}]}]`
      : kind === 2 ? `podSelector: {matchLabels: {tier: back, app: ${app}}}\n  ingress: [{from: [{ipBlock: {cidr: 192.0.2.0/24}}]}, {ports: [{port: 9090}]}]`
      : `podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [${app}]}]}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {}}]}]`;
    docs.push(`apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: policy-${p}, namespace: ${ns}}\nspec:\n  ${spec}`);
  }
  docs.push('apiVersion: networking.gke.io/v1alpha1\nkind: NetworkLogging\nmetadata: {name: default}\nspec: {cluster: {allow: {log: true, delegate: false}, deny: {log: true, delegate: false}}}');
  return docs.join('\n---\n') + '\n';
}

async function writeFlows(path: string): Promise<void> {
  const out = createWriteStream(path);
  const ports = [8080, 9090, 8050, 443, 5432];
  const start = Date.UTC(2026, 0, 1);
  let chunk: string[] = [];
  for (let i = 0; i < FLOWS; i++) {
    const external = rand(20) === 0;
    const src = external ? `192.0.2.${rand(250)}` : podIp(rand(PODS));
    const dest = rand(25) === 0 ? `198.51.100.${rand(250)}` : podIp(rand(PODS));
    const protocol = rand(10) === 0 ? 'udp' : 'tcp';
    chunk.push(`{"time":"${new Date(start + i).toISOString()}","src_ip":"${src}","src_port":${30000 + rand(30000)},"dest_ip":"${dest}","dest_port":${ports[rand(ports.length)]},"protocol":"${protocol}"}`);
    if (chunk.length === 10_000) {
      if (!out.write(chunk.join('\n') + '\n')) await once(out, 'drain');
      chunk = [];
    }
  }
  out.end(chunk.length ? chunk.join('\n') + '\n' : '');
  await once(out, 'finish');
}

/** The floor: the same NDJSON parsed, and as many records written, without evaluating anything. */
async function floor(flowsPath: string, logPath: string, records: number): Promise<void> {
  const writer = new RotatingFileWriter(logPath, Number.MAX_SAFE_INTEGER, 0);
  let written = 0;
  for await (const batch of readLineBatches(createReadStream(flowsPath, { highWaterMark: 1024 * 1024 }))) {
    for (const { text, line } of batch) {
      const { conn, timestamp } = parseTupleFlow(text, line);
      // Two records per flow at most, like the evaluated run (egress and ingress), until the same count is reached.
      for (let d = 0; d < 2 && written < records; d++, written++)
        writer.write(JSON.stringify({ connection: { src_ip: conn.srcIp, dest_ip: conn.destIp, src_port: conn.srcPort, dest_port: conn.destPort, protocol: conn.protocol, direction: d ? 'ingress' : 'egress' }, disposition: 'allow', src: { instance: conn.srcIp }, dest: { instance: conn.destIp }, count: 1, node_name: 'node-0', timestamp }));
    }
    await writer.flush();
  }
  await writer.close();
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const keep = process.argv.includes('--keep');
const dir = mkdtempSync(join(tmpdir(), 'netpol-bench-'));
try {
  const manifestPath = join(dir, 'cluster.yaml');
  const flowsPath = join(dir, 'flows.ndjson');
  writeFileSync(manifestPath, manifests());
  await writeFlows(flowsPath);
  const ours: number[] = [];
  const floors: number[] = [];
  const oursCpu: number[] = [];
  const floorsCpu: number[] = [];
  const cpuSeconds = (since: NodeJS.CpuUsage): number => {
    const used = process.cpuUsage(since);
    return (used.user + used.system) / 1e6;
  };
  const loads: number[] = [];
  let records = 0;
  for (let run = 0; run < RUNS; run++) {
    const logPath = join(dir, `run-${run}.log`);
    const t0 = performance.now();
    let evaluationStart = 0;
    let cpuStart = process.cpuUsage();
    const summary = await runNetpol({
      manifests: [manifestPath],
      flows: flowsPath,
      logFile: logPath,
      watch: false,
      settings: { ...DEFAULT_SETTINGS, rateLimitPerSecond: 0, rotateBytes: Number.MAX_SAFE_INTEGER },
      onProgress: () => {
        if (evaluationStart) return;
        evaluationStart = performance.now();
        cpuStart = process.cpuUsage();
      },
    });
    const t1 = performance.now();
    oursCpu.push(FLOWS / cpuSeconds(cpuStart));
    records = summary.records;
    // Manifest loading (10,000 pods of YAML) is start-up, reported apart; the rate counts the flow loop.
    loads.push(evaluationStart - t0);
    ours.push(FLOWS / ((t1 - evaluationStart) / 1000));
    rmSync(logPath, { force: true });
    const f0 = performance.now();
    const floorCpuStart = process.cpuUsage();
    await floor(flowsPath, logPath, records);
    floors.push(FLOWS / ((performance.now() - f0) / 1000));
    floorsCpu.push(FLOWS / cpuSeconds(floorCpuStart));
    rmSync(logPath, { force: true });
  }
  // Each evaluated run is paired with the floor run right after it, so the pair saw about the same machine load.
  const ratio = median(ours.map((o, i) => o / floors[i]!));
  const cpuRatio = median(oursCpu.map((o, i) => o / floorsCpu[i]!));
  const fmt = (n: number): string => Math.round(n).toLocaleString('en-US');
  console.log(`\n${PODS.toLocaleString('en-US')} pods, ${POLICIES.toLocaleString('en-US')} policies, ${FLOWS.toLocaleString('en-US')} flows, ${records.toLocaleString('en-US')} records, rate limit off, ${RUNS} runs (median)\n`);
  // Wall-clock rates suffer from whatever else runs on the machine; rates per CPU-second of this process less so.
  console.log('| run | flows/s, wall clock (median) | flows per CPU-second (median) | all runs (wall) |');
  console.log('| --- | ---: | ---: | --- |');
  console.log(`| custos netpol (evaluate + write) | ${fmt(median(ours))} | ${fmt(median(oursCpu))} | ${ours.map(fmt).join(', ')} |`);
  console.log(`| floor (parse + write, no evaluation) | ${fmt(median(floors))} | ${fmt(median(floorsCpu))} | ${floors.map(fmt).join(', ')} |`);
  console.log(`\nratio to floor (median of per-run pairs): ${(100 * ratio).toFixed(1)} % wall clock, ${(100 * cpuRatio).toFixed(1)} % per CPU-second (target ≥ 40 %)`);
  console.log(`best run: ${fmt(Math.max(...ours))} flows/s evaluated, floor ${fmt(Math.max(...floors))} flows/s`);
  console.log(`absolute target ≥ 200,000 flows/s: ${median(ours) >= 200_000 ? 'met' : 'not met'} on the wall clock, ${median(oursCpu) >= 200_000 ? 'met' : 'not met'} per CPU-second`);
  console.log(`manifest load (10,000 pods, 1,000 policies): ${fmt(median(loads))} ms`);
} finally {
  if (keep) console.log(`kept ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
}
