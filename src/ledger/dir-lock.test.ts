import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'node:test';
import { Ledger } from './index.ts';

it('one ledger per directory: a second open is refused until the first closes; a dead holder\'s lock is taken over', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'custos-lock-'));
  try {
    const first = await Ledger.open({ dir });
    await assert.rejects(Ledger.open({ dir }), (err: Error & { code?: string }) => err.code === 'IO_ERROR' && /in use by process/.test(err.message));
    await first.close();
    assert.ok(!(await readdir(dir)).includes('LOCK'));
    // As after kill -9: the lock names a process that no longer exists.
    await writeFile(join(dir, 'LOCK'), '2147483646\n');
    const again = await Ledger.open({ dir });
    await again.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
