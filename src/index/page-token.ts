import { createHash } from 'node:crypto';
import { QueryError } from '../query/index.ts';

/** Where a page ended: keyset pagination on (timestamp, organization, ledger index), stable under inserts. */
export interface PageCursor {
  organization: string;
  order: 'asc' | 'desc';
  tsMicros: number;
  index: number;
  /** Digest of the query the token belongs to; a token is only good for the query that produced it. */
  query: string;
}

export function queryDigest(parts: unknown[]): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('base64url').slice(0, 16);
}

export function encodePageToken(cursor: PageCursor): string {
  const { organization, order, tsMicros, index, query } = cursor;
  return Buffer.from(JSON.stringify({ v: 1, o: organization, d: order, t: tsMicros, i: index, q: query })).toString('base64url');
}

/** Decodes a token and checks it belongs to this query; anything else is BAD_PAGE_TOKEN. */
export function decodePageToken(token: string, expected: { organization: string; order: 'asc' | 'desc'; query: string }): PageCursor {
  const bad = (why: string): QueryError => new QueryError('BAD_PAGE_TOKEN', `invalid pageToken: ${why}`);
  if (token.length > 1024 || !/^[A-Za-z0-9_-]+$/.test(token)) throw bad('not a token this server issued');
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
  } catch {
    throw bad('not a token this server issued');
  }
  const t = raw as Record<string, unknown>;
  if (
    typeof t !== 'object' || t === null || t['v'] !== 1 || typeof t['o'] !== 'string' || (t['d'] !== 'asc' && t['d'] !== 'desc')
    || !Number.isSafeInteger(t['t']) || !Number.isSafeInteger(t['i']) || (t['i'] as number) < 0 || typeof t['q'] !== 'string'
  ) {
    throw bad('not a token this server issued');
  }
  if (t['o'] !== expected.organization || t['d'] !== expected.order || t['q'] !== expected.query) {
    throw bad('it was issued for a different filter, order or organization');
  }
  return { organization: t['o'], order: t['d'], tsMicros: t['t'] as number, index: t['i'] as number, query: t['q'] };
}
