import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PolicyActionRecord } from '../../src/model/index.ts';
import { buildCluster, parseManifestText, PolicyActionRecorder, DEFAULT_SETTINGS, type NetpolSettings, type Cluster } from '../../src/netpol/index.ts';
import type { Connection } from '../../src/netpol/index.ts';
import { registry } from '../../src/telemetry/index.ts';

/** Shared by the netpol tests: the fixture cluster plus per-test objects, and a recorder run over flows. */
export const FIXTURES = new URL('../fixtures/netpol/', import.meta.url).pathname;
export const BASE_CLUSTER = readFileSync(`${FIXTURES}cluster.yaml`, 'utf8');
export const IP = { web: '10.8.0.10', db: '10.8.0.11', cache: '10.8.1.12', client: '10.8.1.20', tool: '10.8.1.21', node1: '10.128.0.2', node2: '10.128.0.3' };

export function clusterWith(objects: string): { cluster: Cluster; warnings: string[] } {
  const warnings: string[] = [];
  const load = buildCluster(parseManifestText(`${BASE_CLUSTER}\n---\n${objects}`, 'test', warnings), undefined, warnings);
  if (load.loggingError) throw load.loggingError;
  return { cluster: load.cluster, warnings };
}

export function policyYaml(name: string, namespace: string, spec: string, annotations = ''): string {
  const body = spec.trim().split('\n').map((l) => `  ${l}`).join('\n');
  return `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ${name}, namespace: ${namespace}${annotations ? `, annotations: {${annotations}}` : ''}}\nspec:\n${body}\n---\n`;
}

export function loggingYaml(allow: { log: boolean; delegate: boolean }, deny: { log: boolean; delegate: boolean }): string {
  return `apiVersion: networking.gke.io/v1alpha1\nkind: NetworkLogging\nmetadata: {name: default}\nspec:\n  cluster:\n    allow: {log: ${allow.log}, delegate: ${allow.delegate}}\n    deny: {log: ${deny.log}, delegate: ${deny.delegate}}\n---\n`;
}

export type TestFlow = [t: number, src: string, dest: string, srcPort: number, destPort: number | undefined, protocol: Connection['protocol']];

/** Runs flows (t in seconds after 2024-01-01T00:00:00Z) through a recorder; returns the records and each verdict. */
export function record(cluster: Cluster, flows: TestFlow[], settings: Partial<NetpolSettings> = {}, node?: string): { records: PolicyActionRecord[]; allowed: (boolean | undefined)[] } {
  const records: PolicyActionRecord[] = [];
  const recorder = new PolicyActionRecorder(cluster, { settings: { ...DEFAULT_SETTINGS, ...settings }, ...(node ? { node } : {}), emit: (r) => records.push(r) });
  const base = Date.UTC(2024, 0, 1) / 1000;
  const allowed = flows.map(([t, srcIp, destIp, srcPort, destPort, protocol]) => {
    const conn: Connection = protocol === 'icmp' ? { srcIp, destIp, protocol } : { srcIp, destIp, srcPort, destPort, protocol };
    return recorder.onFlow({ line: 0, timestamp: new Date((base + t) * 1000).toISOString(), t: base + t, conn })?.allowed;
  });
  recorder.finish();
  return { records, allowed };
}

/** The current value of a counter with exactly these labels (0 when never incremented). */
export async function metricValue(name: string, labels: Record<string, string>): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) return 0;
  const { values } = await metric.get();
  const hit = values.find((v) => Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want) && Object.keys(v.labels).length === Object.keys(labels).length);
  return hit?.value ?? 0;
}

export const CONFORMANCE = new URL('../../../shared/conformance/netpol/', import.meta.url).pathname;

interface Expected {
  flow: number;
  allowed: boolean;
  records: { direction: string; disposition: string; policies: string[]; count: number }[];
}

const tupleKey = (c: { src_ip: string; src_port?: number; dest_ip: string; dest_port?: number; protocol: string; direction: string }): string =>
  `${c.src_ip}|${c.src_port}|${c.dest_ip}|${c.dest_port}|${c.protocol}|${c.direction}`;

/** Compares records with a conformance case's expected.ndjson as its README says; returns what differs (empty: pass). */
export function conformanceFailures(caseDir: string, records: PolicyActionRecord[]): string[] {
  const flows = readFileSync(join(caseDir, 'flows.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const expected: Expected[] = readFileSync(join(caseDir, 'expected.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const failures: string[] = [];
  const byKey = new Map<string, PolicyActionRecord>();
  for (const r of records) {
    if (byKey.has(tupleKey(r.connection))) failures.push(`two records for ${tupleKey(r.connection)}`);
    byKey.set(tupleKey(r.connection), r);
  }
  let wanted = 0;
  for (const exp of expected) {
    const f = flows[exp.flow];
    for (const want of exp.records) {
      wanted++;
      const k = tupleKey({ ...f, direction: want.direction });
      const got = byKey.get(k);
      if (!got) {
        failures.push(`flow ${exp.flow} ${k}: missing ${want.disposition} record`);
        continue;
      }
      const gotPolicies = (got.policies ?? []).map((p) => `${p.namespace}/${p.name}`).sort();
      if (got.disposition !== want.disposition || got.count !== want.count || JSON.stringify(gotPolicies) !== JSON.stringify([...want.policies].sort()))
        failures.push(`flow ${exp.flow} ${k}: want ${want.disposition} [${want.policies.join(',')}] count ${want.count}, got ${got.disposition} [${gotPolicies.join(',')}] count ${got.count}`);
      if (Date.parse(got.timestamp) !== Date.parse(f.time)) failures.push(`flow ${exp.flow}: timestamp ${got.timestamp} is not ${f.time}`);
    }
  }
  if (records.length !== wanted) failures.push(`${records.length} records written, ${wanted} expected`);
  return failures;
}
