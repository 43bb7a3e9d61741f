import { createHash } from 'node:crypto';
import ipaddr from 'ipaddr.js';
import { RE2JS } from 're2js';
import { epochMicros, type LogEntry, parseTimestamp } from '../model/index.ts';
import type { Comparator, Expr, Filter, Literal } from './ast.ts';
import { compareCodePoints, forEachLeaf, rankOf, rankTable, searchTokens, valuesAt } from './fields.ts';

export type EntryPredicate = (entry: LogEntry) => boolean;

/** Compiles a filter to an in-memory test over a LogEntry, for streams (tail, alerts); agrees with `compileSql`. */
export function compilePredicate(filter: Filter): EntryPredicate {
  return compile(filter.root);
}

function compile(e: Expr): EntryPredicate {
  switch (e.kind) {
    case 'all': return () => true;
    case 'and': {
      const parts = e.args.map(compile);
      return (entry) => parts.every((p) => p(entry));
    }
    case 'or': {
      const parts = e.args.map(compile);
      return (entry) => parts.some((p) => p(entry));
    }
    case 'not': {
      const inner = compile(e.arg);
      return (entry) => !inner(entry);
    }
    case 'compare': {
      const test = scalarTest(e.op, e.value);
      return (entry) => valuesAt(entry, e.path).some(test);
    }
    case 'time': {
      const test = ordered(e.op);
      return (entry) => valuesAt(entry, e.path).some((v) => {
        const parsed = typeof v === 'string' ? parseTimestamp(v) : undefined;
        return parsed !== undefined && test(epochMicros(parsed) - e.micros);
      });
    }
    case 'rank': {
      const test = ordered(e.op);
      const table = rankTable(e.path)!;
      return (entry) => valuesAt(entry, e.path).some((v) => {
        const rank = typeof v === 'string' ? rankOf(table, v) : -1;
        return rank >= 0 && test(rank - e.rank);
      });
    }
    case 'present': return (entry) => valuesAt(entry, e.path).some(hasScalarLeaf);
    case 'global': {
      const needle = e.text.toLowerCase();
      return (entry) => anyStringLeaf(entry, (s) => s.toLowerCase().includes(needle));
    }
    case 'search': {
      const wanted = e.tokens;
      return (entry) => {
        const roots = e.path ? valuesAt(entry, e.path) : [entry];
        return wanted.every((token) => roots.some((root) => anyStringLeaf(root, (s) => searchTokens(s).includes(token))));
      };
    }
    case 'ipInNet': return (entry) => valuesAt(entry, e.path).some((v) => typeof v === 'string' && ipInNet(v, e.cidr));
    case 'sample': {
      const threshold = sampleThreshold(e.fraction);
      return (entry) => valuesAt(entry, e.path).some((v) => typeof v === 'string' && sampleHash(v) < threshold);
    }
    case 'logId': {
      const suffix = logIdSuffix(e.logId);
      return (entry) => typeof entry.logName === 'string' && entry.logName.toLowerCase().endsWith(suffix);
    }
  }
}

/** The test one stored scalar must pass for `field op value` (any element of an array may pass it). */
function scalarTest(op: Comparator, value: Literal): (v: unknown) => boolean {
  if (op === '=~' || op === '!~') {
    const re = RE2JS.compile((value as { text: string }).text);
    const want = op === '=~';
    return (v) => typeof v === 'string' && re.matcher(v).find() === want;
  }
  if (value.kind === 'null') {
    // NULL_VALUE matches JSON null; any other scalar differs from it.
    if (op === '=' || op === ':') return (v) => v === null;
    if (op === '!=') return (v) => v !== null && typeof v !== 'object';
    return () => false;
  }
  const lower = value.text.toLowerCase();
  const { number, boolean } = value;
  return (v) => {
    if (typeof v === 'string') {
      switch (op) {
        case '=': return v.toLowerCase() === lower;
        case '!=': return v.toLowerCase() !== lower;
        case ':': return v.toLowerCase().includes(lower);
        default: return ordered(op)(compareCodePoints(v, value.text));
      }
    }
    if (typeof v === 'number') {
      if (number === undefined) return false;
      switch (op) {
        case '=': case ':': return v === number;
        case '!=': return v !== number;
        default: return ordered(op)(v - number);
      }
    }
    if (typeof v === 'boolean' && boolean !== undefined) {
      if (op === '=' || op === ':') return v === boolean;
      if (op === '!=') return v !== boolean;
    }
    return false;
  };
}

/** Turns a three-way comparison result into the truth of `op`. */
export function ordered(op: string): (difference: number) => boolean {
  switch (op) {
    case '<': return (d) => d < 0;
    case '<=': return (d) => d <= 0;
    case '>': return (d) => d > 0;
    case '>=': return (d) => d >= 0;
    case '=': return (d) => d === 0;
    case '!=': return (d) => d !== 0;
    default: throw new Error(`not an ordering: ${op}`);
  }
}

function hasScalarLeaf(value: unknown): boolean {
  let found = false;
  forEachLeaf(value, (_path, leaf) => {
    if (leaf !== null) found = true;
  });
  return found;
}

function anyStringLeaf(value: unknown, test: (s: string) => boolean): boolean {
  let found = false;
  forEachLeaf(value, (_path, leaf) => {
    if (!found && typeof leaf === 'string' && test(leaf)) found = true;
  });
  return found;
}

/** Whether `address` (v4 or v6 text) lies in `cidr`; anything that is not an address is outside. */
export function ipInNet(address: string, cidr: string): boolean {
  if (!ipaddr.IPv4.isValidFourPartDecimal(address) && !ipaddr.IPv6.isValid(address)) return false;
  try {
    let ip = ipaddr.parse(address);
    const [net, bits] = ipaddr.parseCIDR(cidr);
    if (ip.kind() !== net.kind() && ip.kind() === 'ipv6' && (ip as ipaddr.IPv6).isIPv4MappedAddress()) {
      ip = (ip as ipaddr.IPv6).toIPv4Address();
    }
    return ip.kind() === net.kind() && ip.match([net, bits]);
  } catch {
    return false;
  }
}

/** sample(): the first 32 bits of MD5(value) as a fraction of 2^32, so SQL (`md5`) and JS pick the same entries. */
export function sampleHash(value: string): number {
  return parseInt(createHash('md5').update(value, 'utf8').digest('hex').slice(0, 8), 16);
}

export function sampleThreshold(fraction: number): number {
  return Math.floor(fraction * 2 ** 32);
}

/** log_id("x") holds when logName ends in `/logs/<x, URL-encoded>`, compared without case like logName =. */
export function logIdSuffix(logId: string): string {
  return `/logs/${encodeURIComponent(logId)}`.toLowerCase();
}
