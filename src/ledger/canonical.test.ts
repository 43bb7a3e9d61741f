import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import canonicalize from 'canonicalize';
import fc from 'fast-check';
import { canonicalJson } from './canonical.ts';
import { LedgerError } from './errors.ts';

describe('canonicalJson (RFC 8785)', () => {
  it('matches the canonicalize package on random JSON values', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 6 }), (value) => {
        assert.equal(canonicalJson(value), canonicalize(value));
      }),
      { numRuns: 2000 },
    );
  });

  it('matches on objects with unicode keys, where UTF-16 order differs from code-point order', () => {
    fc.assert(
      fc.property(fc.dictionary(fc.string({ unit: 'grapheme' }), fc.oneof(fc.double({ noNaN: true, noDefaultInfinity: true }), fc.string({ unit: 'grapheme' }))), (value) => {
        assert.equal(canonicalJson(value), canonicalize(value));
      }),
      { numRuns: 1000 },
    );
  });

  const rows: [string, unknown, string][] = [
    ['sorts keys by UTF-16 code units (RFC 8785 §3.2.3 example)', { '\u20ac': 'Euro Sign', '\r': 'Carriage Return', '\ufb33': 'Hebrew Letter Dalet With Dagesh', '1': 'One', '\ud83d\ude00': 'Emoji: Grinning Face', '\u0080': 'Control', '\u00f6': 'Latin Small Letter O With Diaeresis' }, '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign","\ud83d\ude00":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'],
    ['serializes numbers the ECMAScript way', [1e21, 1e-7, -0, 0.1 + 0.2, 4.5, 333333333.3333333], '[1e+21,1e-7,0,0.30000000000000004,4.5,333333333.3333333]'],
    ['drops undefined members and keeps nulls', { b: undefined, a: null }, '{"a":null}'],
    ['escapes control characters minimally', { s: '\u0001\n"\\' }, '{"s":"\\u0001\\n\\"\\\\"}'],
  ];
  for (const [name, value, expected] of rows) it(name, () => assert.equal(canonicalJson(value), expected));

  it('refuses a lone surrogate in a member name every time, not only the first, and keeps paired ones', () => {
    for (let round = 0; round < 3; round++) {
      assert.throws(() => canonicalJson({ ok: 1, ['k\udc00']: round }), (err: unknown) => err instanceof LedgerError && err.code === 'INVALID_ENTRY');
      assert.equal(canonicalJson({ ['e\ud83d\ude00']: round }), `{"e\ud83d\ude00":${round}}`);
      assert.throws(() => canonicalJson([{ s: 'x' }, { t: 'y\ud800' }]), (err: unknown) => err instanceof LedgerError);
      // past the short-string scan, too
      assert.throws(() => canonicalJson({ long: 'a'.repeat(100) + '\udfff' }), (err: unknown) => err instanceof LedgerError);
      assert.equal(canonicalJson({ long: 'a'.repeat(100) + '\ud83d\ude00' }), `{"long":"${'a'.repeat(100)}\ud83d\ude00"}`);
    }
  });

  it('accepts the text of an escape (backslash, u, d, 8, …) and paired surrogates', () => {
    assert.equal(canonicalJson({ s: '\\ud800', e: '\ud83d\ude00' }), '{"e":"\ud83d\ude00","s":"\\\\ud800"}');
  });

  const refused: [string, unknown][] = [
    ['NaN', { n: Number.NaN }],
    ['Infinity', [Number.POSITIVE_INFINITY]],
    ['a lone surrogate', { s: 'a\ud800b' }],
    ['a lone surrogate in a member name', { ['k\udc00']: 1 }],
    ['a lone surrogate deep in an array', [[{ s: ['\udbff'] }]]],
    ['a bigint', { n: 1n }],
  ];
  for (const [name, value] of refused) {
    it(`refuses ${name}`, () => assert.throws(() => canonicalJson(value), (err: unknown) => err instanceof LedgerError && err.code === 'INVALID_ENTRY'));
  }
});
