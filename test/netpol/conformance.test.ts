import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { PolicyActionRecord } from '../../src/model/index.ts';
import { runNetpol } from '../../src/netpol/index.ts';

// The public conformance suite (../shared/conformance/netpol, derived from np-guard/netpol-analyzer): every case's
// flows through the same code as `custos netpol --manifests CASE/manifests.yaml --flows CASE/flows.ndjson --log-file -`.
const SUITE = new URL('../../../shared/conformance/netpol/', import.meta.url).pathname;
const cases = readdirSync(SUITE, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort();

interface Expected {
  flow: number;
  allowed: boolean;
  records: { direction: string; disposition: string; policies: string[]; count: number }[];
}

const key = (c: { src_ip: string; src_port?: number; dest_ip: string; dest_port?: number; protocol: string; direction: string }): string =>
  `${c.src_ip}|${c.src_port}|${c.dest_ip}|${c.dest_port}|${c.protocol}|${c.direction}`;

describe('netpol conformance suite', () => {
  test('has the 38 cases the README lists', () => assert.equal(cases.length, 38));
  for (const name of cases) {
    test(name, async () => {
      const dir = join(SUITE, name);
      const flows = readFileSync(join(dir, 'flows.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      const expected: Expected[] = readFileSync(join(dir, 'expected.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      const records: PolicyActionRecord[] = [];
      const summary = await runNetpol({ manifests: [join(dir, 'manifests.yaml')], flows: join(dir, 'flows.ndjson'), watch: false, onRecord: (r) => records.push(r) });
      assert.equal(summary.badLines, 0);
      const byKey = new Map<string, PolicyActionRecord>();
      for (const r of records) {
        assert.ok(!byKey.has(key(r.connection)), `two records for ${key(r.connection)}`);
        byKey.set(key(r.connection), r);
      }
      const failures: string[] = [];
      let matched = 0;
      for (const exp of expected) {
        const f = flows[exp.flow];
        for (const want of exp.records) {
          const k = key({ ...f, direction: want.direction });
          const got = byKey.get(k);
          matched++;
          if (!got) {
            failures.push(`flow ${exp.flow} ${k}: missing ${want.disposition} record`);
            continue;
          }
          const gotPolicies = (got.policies ?? []).map((p) => `${p.namespace}/${p.name}`).sort();
          if (got.disposition !== want.disposition || got.count !== want.count || JSON.stringify(gotPolicies) !== JSON.stringify([...want.policies].sort()))
            failures.push(`flow ${exp.flow} ${k}: want ${want.disposition} ${want.policies.join(',')} got ${got.disposition} ${gotPolicies.join(',')}`);
          if (Date.parse(got.timestamp) !== Date.parse(f.time)) failures.push(`flow ${exp.flow}: timestamp ${got.timestamp} is not ${f.time}`);
        }
      }
      assert.equal(records.length, matched, `${records.length} records written, ${matched} expected`);
      assert.deepEqual(failures.slice(0, 10), []);
    });
  }
});
