import { open, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';

/** fsync a directory so that a file created or renamed in it survives a crash. */
export async function syncDirectory(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Replace a file's contents atomically and durably: write a sibling, fsync it, rename over, fsync the directory. */
export async function writeFileDurably(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const temporary = `${path}.tmp-${process.pid}`;
  await writeFile(temporary, data, { mode, flush: true });
  await rename(temporary, path);
  await syncDirectory(dirname(path));
}
