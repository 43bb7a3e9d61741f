import { epochMicros, type LogEntry, parseTimestamp, SEVERITIES } from '../model/index.ts';
import type { Comparator, Expr, FieldPath, Filter, Literal } from './ast.ts';
import { pathKey, rankOf, rankTable } from './fields.ts';
import { logIdSuffix, sampleThreshold } from './predicate.ts';

/**
 * The DuckDB side of the language. Beside each entry's JSON the index keeps a flattened text of its scalar leaves
 * (`fields`): one line per leaf, `RS path US tag value`, arrays transparent in the path, so one pass gives Cloud
 * Logging's any-element rule. Tags: `s` a string equal to its own lower case, `S` any other string, `n` a number
 * (JavaScript's shortest round-trip text), `b` a boolean, `z` null. `fields_folded` holds, for the `S` strings
 * only, the line again with the value lower-cased and tag `s`. So the case-insensitive lines of an entry are the `s`
 * lines of both columns (kept small: most values are already lower case), and its original strings are the `s` and
 * `S` lines of `fields`. A comparison becomes a `contains` (an exact line, or a substring before an RE2 check), with
 * list functions only where a value must be decoded (ordering, regex, numbers).
 */
const RS = '\x1e', US = '\x1f', ESC = '\x1b';

/** Column names of the index table the compiled SQL reads. */
export const INDEX_COLUMNS = {
  timestamp: 'ts',
  receiveTimestamp: 'receive_ts',
  severityRank: 'severity_rank',
  logName: 'log_name',
  resourceType: 'resource_type',
  fields: 'fields',
  fieldsFolded: 'fields_folded',
} as const;

/** Name of the scalar function (VARCHAR, VARCHAR) → BOOLEAN the index registers for ip_in_net(). */
export const IP_IN_NET_FUNCTION = 'custos_ip_in_net';

/** The derived column values of one entry, as `compileSql` expects them. Stored entries always have valid times. */
export interface IndexedColumns {
  tsMicros: number;
  receiveTsMicros: number;
  severityRank: number;
  logName: string;
  resourceType: string;
  fields: string;
  fieldsFolded: string;
}

export function indexedColumns(entry: LogEntry): IndexedColumns {
  const lines = { fields: RS, folded: RS };
  appendLines(entry, '', lines);
  const rank = typeof entry.severity === 'string' ? rankOf(SEVERITIES, entry.severity) : -1;
  return {
    tsMicros: micros(entry.timestamp),
    receiveTsMicros: micros(entry.receiveTimestamp ?? entry.timestamp),
    severityRank: Math.max(rank, 0),
    logName: String(entry.logName ?? '').toLowerCase(),
    resourceType: String(entry.resource?.type ?? '').toLowerCase(),
    fields: lines.fields,
    fieldsFolded: lines.folded,
  };
}

function micros(text: unknown): number {
  const parsed = typeof text === 'string' ? parseTimestamp(text) : undefined;
  return parsed ? epochMicros(parsed) : 0;
}

/** The ingest hot path: one pass over the entry, the path text built incrementally. */
function appendLines(value: unknown, path: string, out: { fields: string; folded: string }): void {
  if (value === undefined) return;
  if (typeof value === 'string') {
    const lower = value.toLowerCase();
    if (lower === value) {
      out.fields += `${path}${US}s${escapeControls(value)}${RS}`;
    } else {
      out.fields += `${path}${US}S${escapeControls(value)}${RS}`;
      out.folded += `${path}${US}s${escapeControls(lower)}${RS}`;
    }
  } else if (Array.isArray(value)) {
    for (const element of value) appendLines(element, path, out);
  } else if (value !== null && typeof value === 'object') {
    for (const key of Object.keys(value)) {
      const segment = escapeSegment(key);
      appendLines((value as Record<string, unknown>)[key], path === '' ? segment : `${path}.${segment}`, out);
    }
  } else if (typeof value === 'number') {
    out.fields += `${path}${US}n${String(value)}${RS}`;
  } else if (typeof value === 'boolean') {
    out.fields += `${path}${US}b${String(value)}${RS}`;
  } else if (value === null) {
    out.fields += `${path}${US}z${RS}`;
  }
}

/** Keeps the separators unambiguous: ESC → ESC A, RS → ESC B, US → ESC C (lower case never makes A, B or C). */
function escapeControls(text: string): string {
  return /[\x1b\x1e\x1f]/.test(text)
    ? text.replace(/[\x1b\x1e\x1f]/g, (c) => ESC + (c === ESC ? 'A' : c === RS ? 'B' : 'C'))
    : text;
}

/** Path segments joined by '.', with '\' and '.' inside a key escaped so `a."b.c"` and `a.b.c` differ. */
function encodePath(path: readonly string[]): string {
  return path.map(escapeSegment).join('.');
}

function escapeSegment(segment: string): string {
  return escapeControls(/[\\.]/.test(segment) ? segment.replace(/[\\.]/g, (c) => `\\${c}`) : segment);
}

const DECODE = (x: string): string =>
  `CASE WHEN contains(${x}, chr(27)) THEN replace(replace(replace(${x}, chr(27) || 'B', chr(30)), chr(27) || 'C', chr(31)), chr(27) || 'A', chr(27)) ELSE ${x} END`;

function reEscape(text: string): string {
  return text.replace(/[\\^$.|?*+()[\]{}]/g, (c) => `\\${c}`);
}

/** RE2 class of SEARCH() token characters (see `searchTokens`). */
const TOKEN_CLASS = '0-9a-z\\x{80}-\\x{10FFFF}';

/**
 * A text every match of `pattern` must contain, for a cheap `contains` before the regex: the literal run the
 * pattern starts with (after `^`), when the pattern has no alternation or flags that could bypass it.
 */
export function requiredLiteral(pattern: string): string | undefined {
  if (/[|]|\(\?/.test(pattern)) return undefined;
  const run = /^\^?([A-Za-z0-9_\- /]*)(.?)/.exec(pattern)!;
  let literal = run[1]!;
  if (run[2] === '?' || run[2] === '*' || run[2] === '{') literal = literal.slice(0, -1);
  return literal.length >= 2 ? literal : undefined;
}

export interface CompiledSql {
  /** A boolean SQL expression over the index table; never NULL. */
  sql: string;
  /** Values for its placeholders `$1`, `$2`, …; a caller adding its own parameters numbers them after these. */
  params: unknown[];
}

/** Compiles a filter to a DuckDB boolean expression over the index table (`INDEX_COLUMNS`). */
export function compileSql(filter: Filter): CompiledSql {
  const params: unknown[] = [];
  const sql = new SqlCompiler((value) => `$${params.push(value)}`).expr(filter.root);
  return { sql, params };
}

const { fields: FIELDS, fieldsFolded: FOLDED } = INDEX_COLUMNS;

/** Which stored values a comparison reads: lower-cased strings, original strings, or numbers. */
type Source = 'folded' | 'original' | 'number';

class SqlCompiler {
  constructor(private readonly p: (value: unknown) => string) {}

  expr(e: Expr): string {
    const p = this.p;
    switch (e.kind) {
      case 'all': return 'TRUE';
      case 'and': return `(${e.args.map((a) => this.expr(a)).join(' AND ')})`;
      case 'or': return `(${e.args.map((a) => this.expr(a)).join(' OR ')})`;
      case 'not': return `(NOT ${this.expr(e.arg)})`;
      case 'compare': return this.compare(e.path, e.op, e.value);
      case 'time': {
        // A bare `column op constant`, so DuckDB prunes row groups by their min/max.
        const column = pathKey(e.path) === 'timestamp' ? INDEX_COLUMNS.timestamp : INDEX_COLUMNS.receiveTimestamp;
        return `${column} ${sqlOp(e.op)} make_timestamp(${p(e.micros)}::BIGINT)`;
      }
      case 'rank': {
        if (pathKey(e.path) === 'severity') return `${INDEX_COLUMNS.severityRank} ${e.op} ${p(e.rank)}`;
        return this.anyValue('folded', e.path, (x) => {
          const cases = rankTable(e.path)!.map((name, i) => `WHEN ${p(name.toLowerCase())} THEN ${i}`).join(' ');
          return `COALESCE(CASE ${x} ${cases} END ${e.op} ${p(e.rank)}, FALSE)`;
        });
      }
      case 'present': {
        const path = encodePath(e.path);
        return `(contains(${FIELDS}, ${p(RS + path)}) AND regexp_matches(${FIELDS}, ${p(`${RS}${reEscape(path)}(?:\\.[^${US}]*)?${US}[sSnb]`)}))`;
      }
      case 'global': {
        const needle = escapeControls(e.text.toLowerCase());
        return this.foldedMatch(needle, `${US}s[^${RS}]*${reEscape(needle)}`);
      }
      case 'search': {
        const pathPart = e.path ? `${reEscape(encodePath(e.path))}(?:\\.[^${US}]*)?` : `[^${US}]*`;
        const other = `[^${RS}${TOKEN_CLASS}]`;
        return `(${e.tokens.map((t) => this.foldedMatch(t, `${RS}${pathPart}${US}s(?:[^${RS}]*${other})?${reEscape(t)}(?:${other}[^${RS}]*)?${RS}`)).join(' AND ')})`;
      }
      case 'ipInNet': return this.anyValue('original', e.path, (x) => `${IP_IN_NET_FUNCTION}(${DECODE(x)}, ${p(e.cidr)})`);
      case 'sample': {
        const threshold = sampleThreshold(e.fraction);
        return this.anyValue('original', e.path, (x) => `('0x' || substr(md5(${DECODE(x)}), 1, 8))::UBIGINT < ${p(threshold)}`);
      }
      case 'logId': return `ends_with(${INDEX_COLUMNS.logName}, ${p(logIdSuffix(e.logId))})`;
    }
  }

  private compare(path: FieldPath, op: Comparator, value: Literal): string {
    const p = this.p;
    const encoded = encodePath(path);
    const line = (tag: string, text: string): string => `${RS}${encoded}${US}${tag}${text}${RS}`;
    if (op === '=~' || op === '!~') {
      const pattern = (value as { text: string }).text;
      const any = this.anyValue('original', path, (x) => `${op === '!~' ? 'NOT ' : ''}regexp_matches(${DECODE(x)}, ${p(pattern)})`);
      const literal = op === '=~' ? requiredLiteral(pattern) : undefined;
      return literal ? `(contains(${FIELDS}, ${p(literal)}) AND ${any})` : any;
    }
    if (value.kind === 'null') {
      if (op === '=' || op === ':') return `contains(${FIELDS}, ${p(line('z', ''))})`;
      if (op === '!=') return `regexp_matches(${FIELDS}, ${p(`${RS}${reEscape(encoded)}${US}[sSnb]`)})`;
      return 'FALSE';
    }
    const column = columnFor(path);
    const lower = escapeControls(value.text.toLowerCase());
    const parts: string[] = [];
    if (column && (op === '=' || op === '!=' || op === ':')) {
      const folded = value.text.toLowerCase();
      parts.push(op === ':' ? `contains(${column}, ${p(folded)})` : `${column} ${sqlOp(op)} ${p(folded)}`);
    } else if (op === '=') {
      const wanted = p(line('s', lower));
      parts.push(`(contains(${FIELDS}, ${wanted}) OR contains(${FOLDED}, ${wanted}))`);
    } else if (op === ':') {
      parts.push(this.foldedMatch(lower, `${RS}${reEscape(encoded)}${US}s[^${RS}]*${reEscape(lower)}`));
    } else if (op === '!=') {
      parts.push(this.anyValue('folded', path, (x) => `${x} <> ${p(lower)}`));
    } else {
      parts.push(this.anyValue('original', path, (x) => `${DECODE(x)} ${op} ${p(value.text)}`));
    }
    if (value.number !== undefined && !column) {
      if (op === '=' || op === ':') parts.push(`contains(${FIELDS}, ${p(line('n', String(value.number)))})`);
      // The number travels as its round-trip text: a JS number parameter may be bound as an integer type.
      else parts.push(this.anyValue('number', path, (x) => `CAST(${x} AS DOUBLE) ${sqlOp(op)} CAST(${p(String(value.number))} AS DOUBLE)`));
    }
    if (value.boolean !== undefined && !column) {
      if (op === '=' || op === ':') parts.push(`contains(${FIELDS}, ${p(line('b', String(value.boolean)))})`);
      else if (op === '!=') parts.push(`contains(${FIELDS}, ${p(line('b', String(!value.boolean)))})`);
    }
    return parts.length === 1 ? parts[0]! : `(${parts.join(' OR ')})`;
  }

  /** Some case-insensitive string line matches `pattern` (RE2); `needle` must occur in it, checked first. */
  private foldedMatch(needle: string, pattern: string): string {
    const n = this.p(needle), re = this.p(pattern);
    return `((contains(${FIELDS}, ${n}) AND regexp_matches(${FIELDS}, ${re})) OR (contains(${FOLDED}, ${n}) AND regexp_matches(${FOLDED}, ${re})))`;
  }

  /** Some leaf at `path` of the given source satisfies `test` (given the SQL name of the raw, still-escaped value). */
  private anyValue(source: Source, path: FieldPath, test: (x: string) => string): string {
    const head = `${RS}${encodePath(path)}${US}`;
    const tags = source === 'folded' ? 's' : source === 'original' ? '[sS]' : 'n';
    const present = this.p(source === 'number' ? `${head}n` : head);
    const extract = (column: string): string => `regexp_extract_all(${column}, ${this.p(`${reEscape(head)}${tags}([^${RS}]*)`)}, 1)`;
    const values = source === 'folded' ? `list_concat(${extract(FIELDS)}, ${extract(FOLDED)})` : extract(FIELDS);
    return `(contains(${FIELDS}, ${present}) AND len(list_filter(${values}, x -> ${test('x')})) > 0)`;
  }
}

/** Single-valued string members with a lower-cased column of their own. */
function columnFor(path: FieldPath): string | undefined {
  switch (pathKey(path)) {
    case 'logName': return INDEX_COLUMNS.logName;
    case 'resource.type': return INDEX_COLUMNS.resourceType;
    default: return undefined;
  }
}

function sqlOp(op: string): string {
  return op === '!=' ? '<>' : op;
}
