/**
 * Tokens shaped by a regular expression (the `regex` / `numericRegex` transformations): a small regex subset
 * (literals, escapes, `.`, `\d \w \s`, classes with ranges, quantifiers `? * + {n} {m,n}`) compiled to a list of
 * atoms, each a character set repeated between min and max times. The characters are chosen by a keyed hash of
 * the original value, so equal inputs in one consistency group give equal tokens.
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
  if (atoms.reduce((n, a) => n + a.max, 0) > MAX_TOKEN_LENGTH) fail(`tokens longer than ${MAX_TOKEN_LENGTH} characters`);
  if (atoms.filter((a) => a.max > a.min).length > MAX_VARIABLE_ATOMS) fail(`more than ${MAX_VARIABLE_ATOMS} variable-length parts`);
  return atoms;
}

const BASE64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
/** Base64 characters taken from one 32-byte hash block (the 44th is padding). */
const CHARS_PER_BLOCK = 43;
const MAX_VARIABLE_ATOMS = 32;

/** Each atom's characters come from the base64 text of the hash, mapped onto its set: base64 symbol i → chars[i mod n]. */
function mapping(chars: string): string {
  let out = '';
  for (let i = 0; i < 64; i++) out += chars[i % chars.length];
  return out;
}

/** How many 32-byte hash blocks a token needs. */
export function tokenBlocks(atoms: TokenAtom[]): number {
  return Math.max(1, Math.ceil(atoms.reduce((n, a) => n + a.max, 0) / CHARS_PER_BLOCK));
}

/** A token from hash blocks, in JavaScript: the same algorithm as `tokenSql` (used for watermarks and tests). */
export function tokenFromBlocks(atoms: TokenAtom[], blocks: Uint8Array[]): string {
  const b64 = blocks.map((b) => Buffer.from(b).toString('base64').slice(0, CHARS_PER_BLOCK)).join('');
  let pos = 0;
  let variable = 0;
  let out = '';
  for (const a of atoms) {
    const map = mapping(a.chars);
    let part = '';
    for (const ch of b64.slice(pos, pos + a.max)) part += map[BASE64.indexOf(ch)];
    pos += a.max;
    if (a.max > a.min) part = part.slice(0, a.min + (blocks[0]![31 - variable++]! % (a.max - a.min + 1)));
    out += part;
  }
  return out;
}

/**
 * The same token as SQL over `blocks` (bytea expressions of 32 bytes): one translate() per atom rather than one
 * expression per character, so the database plans and evaluates it cheaply.
 */
export function tokenSql(atoms: TokenAtom[], blocks: string[]): string {
  const b64 = blocks.length === 1
    ? `pg_catalog.encode(${blocks[0]}, 'base64')`
    : `(${blocks.map((b) => `pg_catalog.substr(pg_catalog.encode(${b}, 'base64'), 1, ${CHARS_PER_BLOCK})`).join(' || ')})`;
  let pos = 0;
  let variable = 0;
  const parts: string[] = [];
  for (const a of atoms) {
    if (a.max === 0) continue;
    let part = a.chars.length === 1 && a.min === a.max
      ? literal(a.chars.repeat(a.max))
      : `pg_catalog.translate(pg_catalog.substr(${b64}, ${pos + 1}, ${a.max}), '${BASE64}', ${literal(mapping(a.chars))})`;
    pos += a.max;
    if (a.max > a.min) part = `pg_catalog.left(${part}, ${a.min} + pg_catalog.get_byte(${blocks[0]}, ${31 - variable++}) % ${a.max - a.min + 1})`;
    parts.push(part);
  }
  return parts.length === 1 ? parts[0]! : `(${parts.join(' || ')})`;
}
