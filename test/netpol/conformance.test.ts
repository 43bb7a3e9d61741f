import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { PolicyActionRecord } from '../../src/model/index.ts';
import { runNetpol } from '../../src/netpol/index.ts';
import { CONFORMANCE, conformanceFailures } from './helpers.ts';

// The public conformance suite (../shared/conformance/netpol, derived from np-guard/netpol-analyzer), every case through
// the code of `custos netpol --manifests CASE/manifests.yaml --flows CASE/flows.ndjson --log-file -`, in-process.
// test/netpol/cli.test.ts runs some of them through the binary as well.
const cases = readdirSync(CONFORMANCE, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort();

describe('netpol conformance suite', () => {
  test('has the 38 cases its README lists', () => assert.equal(cases.length, 38));
  for (const name of cases)
    test(name, async () => {
      const dir = join(CONFORMANCE, name);
      const records: PolicyActionRecord[] = [];
      const summary = await runNetpol({ manifests: [join(dir, 'manifests.yaml')], flows: join(dir, 'flows.ndjson'), watch: false, onRecord: (r) => records.push(r) });
      assert.equal(summary.badLines, 0);
      assert.deepEqual(conformanceFailures(dir, records).slice(0, 10), []);
    });
});
