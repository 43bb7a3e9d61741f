import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'node:test';
import { promisify } from 'node:util';
import { ADMIN, entry, startTestStore } from '../helpers/store.ts';

const run = promisify(execFile);
const bin = join(import.meta.dirname, '../../bin/custos.js');

it('custos serve archives sealed segments to the archive directory within maxDelay, and verify --archive passes', async () => {
  const archiveDir = await mkdtemp(join(tmpdir(), 'custos-archive-'));
  const store = await startTestStore({ archive: { dir: archiveDir, maxDelay: '1s' } });
  try {
    const written = await store.write(ADMIN, Array.from({ length: 20 }, (_, i) => entry(i)));
    assert.equal(written.status, 200);
    let manifests: string[] = [];
    for (let tries = 0; tries < 100 && manifests.length === 0; tries++) {
      await new Promise((r) => setTimeout(r, 200));
      manifests = await readdir(join(archiveDir, 'default', 'manifests')).catch(() => []);
    }
    assert.ok(manifests.length > 0, 'no manifest reached the archive within 20 s');
    const verified = await run(process.execPath, [bin, 'verify', '--archive', archiveDir]);
    assert.match(verified.stdout + verified.stderr, /intact: 20 entries/);
  } finally {
    await store.close();
    await rm(archiveDir, { recursive: true, force: true });
  }
});
