import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const CUSTOS_BIN = join(import.meta.dirname, '../../bin/custos.js');

/** The Node flags of the bin's `#!/usr/bin/env -S node …` line, so that a benchmark runs custos as its users do. */
const SHEBANG_FLAGS = (/^#!\S+ -S node (?<flags>[^\n]*)/.exec(readFileSync(CUSTOS_BIN, 'utf8'))?.groups?.['flags'] ?? '').split(' ').filter(Boolean);

/** Arguments for `spawn(process.execPath, …)` that run `custos ARGS` with the bin's own Node flags. */
export function custosArgs(...args: string[]): string[] {
  return [...SHEBANG_FLAGS, CUSTOS_BIN, ...args];
}
