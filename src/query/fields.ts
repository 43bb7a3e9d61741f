import { SEVERITIES } from '../model/index.ts';
import type { FieldPath } from './ast.ts';

/** Top-level LogEntry members a filter may name (Cloud Logging refuses unknown fields; so do we). */
export const TOP_LEVEL_FIELDS = new Set([
  'insertId', 'logName', 'timestamp', 'receiveTimestamp', 'severity', 'resource', 'labels', 'categories',
  'organization', 'jsonPayload', 'textPayload',
]);

/** Fields compared by time rather than as text. */
export const TIME_FIELDS = new Set(['timestamp', 'receiveTimestamp']);

/** Fields compared by rank: LogEntry severity, and seed 003's audit `header.severity` (NORMAL < WARNING < CRITICAL). */
const RANKS: Record<string, readonly string[]> = {
  severity: SEVERITIES,
  'jsonPayload.header.severity': ['NORMAL', 'WARNING', 'CRITICAL'],
};

export function pathKey(path: FieldPath): string {
  return path.join('.');
}

/** The rank table of a ranked field, or undefined. */
export function rankTable(path: FieldPath): readonly string[] | undefined {
  return RANKS[pathKey(path)];
}

/** Rank of a value in a table, compared case-insensitively (by lower case, as the index stores it); -1 if absent. */
export function rankOf(table: readonly string[], value: string): number {
  let lowered = LOWERED_TABLES.get(table);
  if (!lowered) LOWERED_TABLES.set(table, (lowered = table.map((name) => name.toLowerCase())));
  return lowered.indexOf(value.toLowerCase());
}
const LOWERED_TABLES = new WeakMap<readonly string[], string[]>();

export type Scalar = string | number | boolean | null;

/**
 * Every value a path reaches. Arrays are transparent at every level, so `jsonPayload.policies.name` reaches the
 * name of each policy (Cloud Logging's "any element" rule). Only own members count.
 */
export function valuesAt(root: unknown, path: FieldPath): unknown[] {
  let current: unknown[] = [root];
  for (const segment of path) {
    const next: unknown[] = [];
    for (const value of current) collectMember(value, segment, next);
    current = next;
    if (current.length === 0) return current;
  }
  const out: unknown[] = [];
  for (const value of current) flattenArrays(value, out);
  return out;
}

function collectMember(value: unknown, segment: string, out: unknown[]): void {
  if (Array.isArray(value)) {
    for (const element of value) collectMember(element, segment, out);
  } else if (value !== null && typeof value === 'object' && Object.hasOwn(value, segment)) {
    const member = (value as Record<string, unknown>)[segment];
    if (member !== undefined) out.push(member);
  }
}

function flattenArrays(value: unknown, out: unknown[]): void {
  if (Array.isArray(value)) for (const element of value) flattenArrays(element, out);
  else out.push(value);
}

/** Calls `visit` for every scalar leaf under `value`, with its path (arrays transparent). */
export function forEachLeaf(value: unknown, visit: (path: string[], leaf: Scalar) => void, path: string[] = []): void {
  if (value === undefined) return;
  if (Array.isArray(value)) {
    for (const element of value) forEachLeaf(element, visit, path);
  } else if (value !== null && typeof value === 'object') {
    for (const [key, member] of Object.entries(value)) forEachLeaf(member, visit, [...path, key]);
  } else if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean' || value === null) {
    visit(path, value);
  }
}

/** Token characters for SEARCH(): ASCII letters and digits, and every non-ASCII character. */
const TOKEN_SPLIT = /[^0-9a-z\u0080-\u{10FFFF}]+/u;

/** SEARCH() tokens of a text: lower-cased maximal runs of token characters. */
export function searchTokens(text: string): string[] {
  return text.toLowerCase().split(TOKEN_SPLIT).filter((t) => t.length > 0);
}

const NUMBER = /^-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

/** The number a literal's text also reads as, if it is one. */
export function numberReading(text: string): number | undefined {
  if (!NUMBER.test(text)) return undefined;
  const n = Number(text);
  return Number.isFinite(n) ? n : undefined;
}

export function booleanReading(text: string): boolean | undefined {
  const lower = text.toLowerCase();
  return lower === 'true' ? true : lower === 'false' ? false : undefined;
}

/** Code-point order (the order of UTF-8 bytes, which is how DuckDB compares VARCHAR). */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i), y = b.charCodeAt(i);
    if (x === y) continue;
    const xs = x >= 0xd800 && x <= 0xdfff, ys = y >= 0xd800 && y <= 0xdfff;
    if (xs !== ys) return xs ? 1 : -1; // a surrogate half encodes a code point above every BMP unit
    return x - y;
  }
  return a.length - b.length;
}
