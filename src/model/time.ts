/**
 * RFC 3339 timestamps with up to nanosecond precision (GKE writes nine fractional digits). JavaScript's Date keeps
 * milliseconds only, so the fraction is carried alongside it.
 */
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9})\d*)?([Zz]|[+-]\d{2}:\d{2})$/;

export interface ParsedTimestamp {
  /** Whole seconds since the epoch, UTC. */
  epochSeconds: number;
  /** Nanoseconds within the second, 0 ≤ n < 1e9. */
  nanos: number;
}

// Entries come in bursts stamped within the same second: the last two UTC seconds parsed are kept (an entry has two
// timestamps, its own and the time it was received), so a timestamp that shares one costs a short match instead of
// a full parse and a Date round trip.
const recentSeconds = [{ text: '', epochSeconds: 0 }, { text: '', epochSeconds: 0 }];
let nextRecent = 0;
const FRACTION_UTC = /^(?:\.(\d{1,9})\d*)?[Zz]$/;
/** What `formatTimestamp` writes: UTC, upper-case T and Z, a fraction of at most nine digits without trailing zeros. */
const CANONICAL_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:[0-5]\d(?:\.\d{0,8}[1-9])?Z$/;

export function parseTimestamp(text: string): ParsedTimestamp | undefined {
  for (const recent of recentSeconds) {
    if (recent.text === '' || !text.startsWith(recent.text)) continue;
    const fraction = FRACTION_UTC.exec(text.slice(19));
    if (fraction) return { epochSeconds: recent.epochSeconds, nanos: fraction[1] ? Number(fraction[1].padEnd(9, '0')) : 0 };
  }
  const m = RFC3339.exec(text);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s, frac, zone] = m as unknown as string[];
  const month = Number(mo), day = Number(d), hour = Number(h), minute = Number(mi), second = Number(s);
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) return undefined;
  const base = Date.UTC(Number(y), month - 1, day, hour, minute, Math.min(second, 59));
  if (Number.isNaN(base) || new Date(base).getUTCDate() !== day) return undefined;
  let offsetMinutes = 0;
  if (zone !== 'Z' && zone !== 'z') {
    const sign = zone!.startsWith('-') ? -1 : 1;
    offsetMinutes = sign * (Number(zone!.slice(1, 3)) * 60 + Number(zone!.slice(4, 6)));
    if (Number(zone!.slice(4, 6)) > 59) return undefined;
  }
  const epochSeconds = base / 1000 - offsetMinutes * 60;
  const nanos = frac ? Number(frac.padEnd(9, '0')) : 0;
  if (offsetMinutes === 0 && second < 60) {
    recentSeconds[nextRecent] = { text: text.slice(0, 19), epochSeconds };
    nextRecent = 1 - nextRecent;
  }
  return { epochSeconds, nanos };
}

/** Canonical UTC form: `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, keeping the precision that was given (trailing zeros cut). */
export function formatTimestamp(t: ParsedTimestamp): string {
  const iso = new Date(t.epochSeconds * 1000).toISOString().slice(0, 19);
  if (t.nanos === 0) return `${iso}Z`;
  return `${iso}.${String(t.nanos).padStart(9, '0').replace(/0+$/, '')}Z`;
}

/** Normalizes an RFC 3339 timestamp to UTC, or returns undefined when it is not one. */
export function normalizeTimestamp(text: string): string | undefined {
  const parsed = parseTimestamp(text);
  if (parsed && CANONICAL_UTC.test(text)) return text;
  return parsed && formatTimestamp(parsed);
}

/** Microseconds since the epoch: the index's time resolution (DuckDB TIMESTAMP). */
export function epochMicros(t: ParsedTimestamp): number {
  return t.epochSeconds * 1_000_000 + Math.floor(t.nanos / 1000);
}

export function nowTimestamp(): string {
  return new Date().toISOString();
}
