import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Ledger } from '../../src/ledger/index.ts';
import { sampleEntry } from '../fixtures/ledger/entries.ts';

const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

function custos(...args: string[]) {
  return spawnSync(process.execPath, ['bin/custos.js', ...args], { encoding: 'utf8', env: { ...process.env, CUSTOS_LOG_LEVEL: 'warn' } });
}

describe('custos verify', () => {
  it('exits 0 on an intact data dir and archive, 2 naming code, org, segment and entry after a flipped byte', async () => {
    const root = await mkdtemp(join(tmpdir(), 'custos-verify-cli-'));
    dirs.push(root);
    const dir = join(root, 'ledger');
    const bucket = join(root, 'bucket');
    const ledger = await Ledger.open({ dir, archive: { target: bucket } });
    await ledger.append('acme', Array.from({ length: 50 }, (_, n) => sampleEntry(n)));
    await ledger.archive({ force: true });
    await ledger.close();

    const intact = custos('verify', '--data', root, '--json');
    assert.equal(intact.status, 0, intact.stderr);
    assert.equal((JSON.parse(intact.stdout) as { entries: number }).entries, 50);
    assert.match(intact.stderr, /intact: 50 entries in 1 organization/);
    const archive = custos('verify', '--archive', bucket);
    assert.equal(archive.status, 0, archive.stderr);

    const segments = join(dir, 'orgs', 'acme', 'segments');
    const [name] = await readdir(segments);
    const path = join(segments, name as string);
    const bytes = await readFile(path);
    bytes[bytes.length - 5] = (bytes[bytes.length - 5] as number) ^ 0x20;
    await writeFile(path, bytes);
    const tampered = custos('verify', '--data', dir);
    assert.equal(tampered.status, 2, tampered.stderr);
    assert.match(tampered.stderr, new RegExp(`BAD_RECORD org=acme segment=${name} entry=49`));
  });
});
