import { LedgerError } from './errors.ts';

const MAX_DEPTH = 512;
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * RFC 8785 JSON Canonicalization Scheme: object members sorted by their names' UTF-16 code units (what
 * `Array.prototype.sort` does for strings), no whitespace, strings and numbers serialized as ECMAScript's
 * JSON.stringify does (RFC 8785 §3.2.2). Values JSON cannot represent are refused rather than guessed.
 */
export function canonicalJson(value: unknown): string {
  return serialize(value, 0);
}

function serialize(value: unknown, depth: number): string {
  switch (typeof value) {
    case 'string':
      if (LONE_SURROGATE.test(value)) throw new LedgerError('INVALID_ENTRY', 'string contains a lone surrogate (not I-JSON, RFC 8785 §3.2.2.2)');
      return JSON.stringify(value);
    case 'number':
      if (!Number.isFinite(value)) throw new LedgerError('INVALID_ENTRY', `number ${value} has no JSON form`);
      return JSON.stringify(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object':
      break;
    default:
      throw new LedgerError('INVALID_ENTRY', `a ${typeof value} has no JSON form`);
  }
  if (value === null) return 'null';
  if (depth >= MAX_DEPTH) throw new LedgerError('INVALID_ENTRY', `nesting deeper than ${MAX_DEPTH}`);
  const toJSON = (value as { toJSON?: unknown }).toJSON;
  if (typeof toJSON === 'function') return serialize(toJSON.call(value), depth + 1);
  if (Array.isArray(value)) {
    let out = '[';
    for (let i = 0; i < value.length; i++) {
      const element: unknown = value[i];
      if (i > 0) out += ',';
      out += element === undefined || typeof element === 'function' || typeof element === 'symbol' ? 'null' : serialize(element, depth + 1);
    }
    return out + ']';
  }
  const record = value as Record<string, unknown>;
  const keys = Object.keys(record).sort();
  let out = '{';
  let first = true;
  for (const key of keys) {
    const member = record[key];
    if (member === undefined || typeof member === 'function' || typeof member === 'symbol') continue;
    if (!first) out += ',';
    first = false;
    out += serialize(key, depth) + ':' + serialize(member, depth + 1);
  }
  return out + '}';
}
