import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LedgerError } from './errors.ts';

const LOCK_FILE = 'LOCK';
/** Directories this process holds: its own PID in a lock file is stale only if it is not one of these. */
const held = new Set<string>();

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * One writer per ledger directory: a second `custos serve` (or `reindex`) on the same data would cut the first one's
 * unsynced tail as "torn" and interleave appends. The lock file names its holder's PID; a lock whose holder is gone
 * (after `kill -9`) is taken over.
 */
export async function lockLedgerDir(dir: string): Promise<() => Promise<void>> {
  const path = join(dir, LOCK_FILE);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await writeFile(path, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      held.add(path);
      return async () => {
        held.delete(path);
        await rm(path, { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new LedgerError('IO_ERROR', `cannot lock ${dir}: ${(err as Error).message}`, { cause: err });
      }
    }
    const holder = Number((await readFile(path, 'utf8').catch(() => '')).trim());
    const heldByOther = holder === process.pid ? held.has(path) : Number.isInteger(holder) && holder > 0 && alive(holder);
    if (heldByOther) {
      throw new LedgerError('IO_ERROR', `${dir} is in use by process ${holder} (another custos serve or reindex); stop it first, or read through its --server`);
    }
    await rm(path, { force: true });
  }
  throw new LedgerError('IO_ERROR', `cannot lock ${dir}: another process keeps taking the lock`);
}
