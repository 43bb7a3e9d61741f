/**
 * Tokens shaped by a regular expression (the `regex` / `numericRegex` transformations): a small regex subset
 * (literals, escapes, `.`, `\d \w \s`, classes with ranges, quantifiers `? * + {n} {m,n}`) compiled to a list of
 * atoms, each a character set repeated between min and max times. The characters are chosen by bytes of a keyed
 * hash of the original value, so equal inputs in one consistency group give equal tokens.
 */
import { DataProxyError } from './errors.ts';
import { literal } from './sql.ts';

export interface TokenAtom {
  chars: string;
  min: number;
  max: number;
}

const MAX_TOKEN_LENGTH = 256;
const UNBOUNDED_REPEAT = 8;
const DIGITS = '0123456789';
const WORD = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_';
const DOT = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

function escapeChars(c: string): string {
  if (c === 'd') return DIGITS;
  if (c === 'w') return WORD;
  if (c === 's') return ' ';
  if (/[A-Za-z0-9]/.test(c)) throw new DataProxyError('CONFIG', `unsupported escape \\${c} in token pattern`);
  return c;
}

export function compileTokenPattern(pattern: string): TokenAtom[] {
  const atoms: TokenAtom[] = [];
  let i = 0;
  const fail = (what: string): never => {
    throw new DataProxyError('CONFIG', `token pattern "${pattern}": ${what} at offset ${i}`);
  };
  while (i < pattern.length) {
    const c = pattern[i]!;
    let chars: string;
    if (c === '^' && i === 0) { i++; continue; }
    if (c === '$' && i === pattern.length - 1) { i++; continue; }
    if (c === '(' || c === ')' || c === '|') fail('groups and alternation are not supported');
    if (c === '\\') {
      if (i + 1 >= pattern.length) fail('dangling escape');
      chars = escapeChars(pattern[i + 1]!);
      i += 2;
    } else if (c === '.') {
      chars = DOT;
      i++;
    } else if (c === '[') {
      i++;
      if (pattern[i] === '^') fail('negated classes are not supported');
      const set = new Set<string>();
      while (i < pattern.length && pattern[i] !== ']') {
        const from = pattern[i]!;
        if (from === '\\') {
          for (const ch of escapeChars(pattern[i + 1] ?? '')) set.add(ch);
          i += 2;
          continue;
        }
        i++;
        if (pattern[i] === '-' && i + 1 < pattern.length && pattern[i + 1] !== ']') {
          const to = pattern[i + 1]!;
          if (to.charCodeAt(0) < from.charCodeAt(0)) fail('reversed range');
          for (let code = from.charCodeAt(0); code <= to.charCodeAt(0); code++) set.add(String.fromCharCode(code));
          i += 2;
        } else {
          set.add(from);
        }
      }
      if (pattern[i] !== ']') fail('unterminated class');
      i++;
      if (set.size === 0) fail('empty class');
      chars = [...set].join('');
    } else if ('*+?{}'.includes(c)) {
      return fail('quantifier without an atom');
    } else {
      chars = c;
      i++;
    }
    let min = 1;
    let max = 1;
    const q = pattern[i];
    if (q === '?') { min = 0; max = 1; i++; }
    else if (q === '*') { min = 0; max = UNBOUNDED_REPEAT; i++; }
    else if (q === '+') { min = 1; max = UNBOUNDED_REPEAT; i++; }
    else if (q === '{') {
      const m = /^\{(\d+)(?:(,)(\d*))?\}/.exec(pattern.slice(i));
      if (!m) fail('malformed {m,n}');
      min = Number(m![1]);
      max = m![2] ? (m![3] ? Number(m![3]) : min + UNBOUNDED_REPEAT) : min;
      if (max < min) fail('{m,n} with n < m');
      i += m![0].length;
    }
    atoms.push({ chars, min, max });
  }
  if (atoms.length === 0) fail('empty pattern');
  if (tokenBytes(atoms) > MAX_TOKEN_LENGTH * 2) fail(`tokens longer than ${MAX_TOKEN_LENGTH} characters`);
  return atoms;
}

/** How many hash bytes a token needs: one per character position plus one per variable-length atom. */
export function tokenBytes(atoms: TokenAtom[]): number {
  return atoms.reduce((n, a) => n + a.max + (a.max > a.min ? 1 : 0), 0);
}

/** A token from hash bytes, in JavaScript (used for watermarks and to test the SQL form against). */
export function tokenFromBytes(atoms: TokenAtom[], bytes: Uint8Array): string {
  let at = 0;
  let out = '';
  for (const a of atoms) {
    let part = '';
    for (let k = 0; k < a.max; k++) part += a.chars[bytes[at++]! % a.chars.length];
    const count = a.max > a.min ? a.min + (bytes[at++]! % (a.max - a.min + 1)) : a.max;
    out += part.slice(0, count);
  }
  return out;
}

/** The same token as a SQL expression over `bytes`, a bytea expression at least `tokenBytes` long. */
export function tokenSql(atoms: TokenAtom[], bytes: string): string {
  let at = 0;
  const parts: string[] = [];
  for (const a of atoms) {
    if (a.max === 0) continue;
    const chars: string[] = [];
    for (let k = 0; k < a.max; k++) {
      chars.push(a.chars.length === 1 ? literal(a.chars) : `substr(${literal(a.chars)}, get_byte(${bytes}, ${at}) % ${a.chars.length} + 1, 1)`);
      at++;
    }
    const joined = chars.length === 1 ? chars[0]! : `(${chars.join(' || ')})`;
    if (a.max > a.min) {
      parts.push(`left(${joined}, ${a.min} + get_byte(${bytes}, ${at}) % ${a.max - a.min + 1})`);
      at++;
    } else {
      parts.push(joined);
    }
  }
  return parts.length === 1 ? parts[0]! : `(${parts.join(' || ')})`;
}
