import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { compileTokenPattern, tokenBlocks, tokenFromBlocks } from './tokens.ts';

const PATTERNS = ['[A-Za-z]{1,15}', '[a-z]{50,60}', '[0-9]{3}-[0-9]{2}-[0-9]{4}', '\\d{4}', '[a-z]+@example\\.org', 'X[A-F0-9]?Y*', '^[1-9][0-9]{5}$', '\\w{2,3}\\.'];

test('tokens match the pattern they were generated from', () => {
  for (const pattern of PATTERNS) {
    const atoms = compileTokenPattern(pattern);
    const re = new RegExp(`^${pattern.replace(/^\^|\$$/g, '')}$`);
    const block = fc.uint8Array({ minLength: 32, maxLength: 32 });
    fc.assert(fc.property(fc.array(block, { minLength: tokenBlocks(atoms), maxLength: tokenBlocks(atoms) }), (blocks) => {
      assert.match(tokenFromBlocks(atoms, blocks), re);
    }), { numRuns: 200 });
  }
});

test('unsupported or broken patterns are configuration errors that say where', () => {
  for (const [pattern, message] of [
    ['(a|b)', /groups and alternation/], ['[^a]', /negated/], ['[a-', /unterminated/], ['a{3,1}', /n < m/], ['*a', /quantifier/], ['\\p', /unsupported escape/], ['', /empty/],
  ] as const) {
    assert.throws(() => compileTokenPattern(pattern), (err: Error & { code?: string }) => err.code === 'CONFIG' && message.test(err.message), pattern);
  }
});
