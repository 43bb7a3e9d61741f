#!/usr/bin/env -S node --max-semi-space-size=32
// Runs the TypeScript sources through tsx, so a clean checkout needs no build step.
// The larger young generation: ingest keeps several batches of parsed entries alive across a scavenge, and with V8's
// default those survivors are copied and promoted; 32 MB semi-spaces cut the store's CPU per entry by about 5 %
// (docs/benchmarks.md). Scripts that start this file with `node` directly pass the same flags (test/helpers/bin.ts).
import { register } from 'tsx/esm/api';
register();
await import('../src/cli/main.ts');
