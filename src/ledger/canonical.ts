import { LedgerError } from './errors.ts';

const MAX_DEPTH = 512;
// JSON.stringify writes a lone surrogate as a \udXXX escape (ES2019 well-formed JSON.stringify), so one search of
// the output finds the rare candidates and only then are the strings checked exactly.
const ESCAPED_SURROGATE = /\\ud[89a-f]/i;
const LONE_SURROGATE = /\p{Cs}/u;
// Member names repeat across entries (`insertId`, `logName`, …): their serialized form is kept, up to a bound.
const quotedNames = new Map<string, string>();
const MAX_QUOTED_NAMES = 10_000;

/**
 * RFC 8785 JSON Canonicalization Scheme: object members sorted by their names' UTF-16 code units (what
 * `Array.prototype.sort` does for strings), no whitespace, strings and numbers serialized as ECMAScript's
 * JSON.stringify does (RFC 8785 §3.2.2). Values JSON cannot represent are refused rather than guessed.
 */
export function canonicalJson(value: unknown): string {
  const json = serialize(value, 0);
  if (ESCAPED_SURROGATE.test(json) && hasLoneSurrogate(value, 0)) {
    throw new LedgerError('INVALID_ENTRY', 'string contains a lone surrogate (not I-JSON, RFC 8785 §3.2.2.2)');
  }
  return json;
}

function hasLoneSurrogate(value: unknown, depth: number): boolean {
  if (typeof value === 'string') return LONE_SURROGATE.test(value);
  if (typeof value !== 'object' || value === null || depth > MAX_DEPTH) return false;
  const toJSON = (value as { toJSON?: unknown }).toJSON;
  if (typeof toJSON === 'function') return hasLoneSurrogate(toJSON.call(value), depth + 1);
  if (Array.isArray(value)) return value.some((element) => hasLoneSurrogate(element, depth + 1));
  return Object.entries(value).some(([name, member]) => LONE_SURROGATE.test(name) || hasLoneSurrogate(member, depth + 1));
}

function quoteName(name: string): string {
  let quoted = quotedNames.get(name);
  if (quoted === undefined) {
    quoted = JSON.stringify(name);
    if (quotedNames.size < MAX_QUOTED_NAMES) quotedNames.set(name, quoted);
  }
  return quoted;
}

const omitted = (value: unknown): boolean => value === undefined || typeof value === 'function' || typeof value === 'symbol';

function serialize(value: unknown, depth: number): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new LedgerError('INVALID_ENTRY', `number ${value} has no JSON form`);
    return JSON.stringify(value);
  }
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (value === null) return 'null';
  if (typeof value !== 'object') throw new LedgerError('INVALID_ENTRY', `a ${typeof value} has no JSON form`);
  if (depth >= MAX_DEPTH) throw new LedgerError('INVALID_ENTRY', `nesting deeper than ${MAX_DEPTH}`);
  const toJSON = (value as { toJSON?: unknown }).toJSON;
  if (typeof toJSON === 'function') return serialize(toJSON.call(value), depth + 1);
  if (Array.isArray(value)) {
    let out = '[';
    for (let i = 0; i < value.length; i++) {
      const element: unknown = value[i];
      if (i > 0) out += ',';
      out += omitted(element) ? 'null' : serialize(element, depth + 1);
    }
    return out + ']';
  }
  const record = value as Record<string, unknown>;
  const names = Object.keys(record).sort();
  let out = '{';
  for (let i = 0; i < names.length; i++) {
    const name = names[i] as string;
    const member = record[name];
    if (omitted(member)) continue;
    out += (out.length > 1 ? ',' : '') + quoteName(name) + ':' + serialize(member, depth + 1);
  }
  return out + '}';
}
