import { epochMicros, type LogEntry, parseTimestamp, SEVERITIES } from '../model/index.ts';
import type { Comparator, Expr, FieldPath, Filter, Literal } from './ast.ts';
import { forEachLeaf, pathKey, rankOf, rankTable } from './fields.ts';
import { logIdSuffix, sampleThreshold } from './predicate.ts';

/**
 * The DuckDB side of the language. The index keeps, beside each entry's JSON, a flattened text of its scalar
 * leaves ("fields"): one line per leaf, `RS path US tag value`, with arrays transparent in the path (so one pass
 * gives Cloud Logging's any-element rule), and the same text with lower-cased string values ("fields_lower") for the
 * case-insensitive comparisons. Each comparison becomes a `contains` (exact line or substring) or an RE2 match
 * over those, with list functions only where a value must be decoded (ordering, regex, numbers).
 *
 * Tags: s string, n number (JavaScript's shortest round-trip text), b boolean, z null.
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
  fieldsLower: 'fields_lower',
} as const;

/** Name of the scalar function (VARCHAR, VARCHAR) → BOOLEAN the index registers for ip_in_net(). */
export const IP_IN_NET_FUNCTION = 'custos_ip_in_net';

/** The derived column values of one entry, as `compileSql` expects them. */
export interface IndexedColumns {
  tsMicros: number | null;
  receiveTsMicros: number | null;
  severityRank: number | null;
  logName: string;
  resourceType: string;
  fields: string;
  fieldsLower: string;
}

export function indexedColumns(entry: LogEntry): IndexedColumns {
  let fields = RS, fieldsLower = RS;
  forEachLeaf(entry, (path, leaf) => {
    const head = `${encodePath(path)}${US}`;
    if (typeof leaf === 'string') {
      fields += `${head}s${escapeControls(leaf)}${RS}`;
      fieldsLower += `${head}s${escapeControls(leaf.toLowerCase())}${RS}`;
    } else {
      const line = `${head}${scalarTag(leaf)}${RS}`;
      fields += line;
      fieldsLower += line;
    }
  });
  const micros = (text: unknown): number | null => {
    const parsed = typeof text === 'string' ? parseTimestamp(text) : undefined;
    return parsed ? epochMicros(parsed) : null;
  };
  const rank = typeof entry.severity === 'string' ? rankOf(SEVERITIES, entry.severity) : -1;
  return {
    tsMicros: micros(entry.timestamp),
    receiveTsMicros: micros(entry.receiveTimestamp),
    severityRank: rank < 0 ? null : rank,
    logName: String(entry.logName ?? '').toLowerCase(),
    resourceType: String(entry.resource?.type ?? '').toLowerCase(),
    fields,
    fieldsLower,
  };
}

function scalarTag(leaf: number | boolean | null): string {
  if (leaf === null) return 'z';
  return typeof leaf === 'number' ? `n${String(leaf)}` : `b${String(leaf)}`;
}

/** Keeps the separators unambiguous: ESC → ESC A, RS → ESC B, US → ESC C (lower case never makes A, B or C). */
function escapeControls(text: string): string {
  return /[\x1b\x1e\x1f]/.test(text)
    ? text.replace(/[\x1b\x1e\x1f]/g, (c) => ESC + (c === ESC ? 'A' : c === RS ? 'B' : 'C'))
    : text;
}

/** Path segments joined by '.', with '\' and '.' inside a key escaped so `a."b.c"` and `a.b.c` differ. */
function encodePath(path: readonly string[]): string {
  return path.map((segment) => escapeControls(segment.replace(/[\\.]/g, (c) => `\\${c}`))).join('.');
}

const DECODE = (x: string): string =>
  `CASE WHEN contains(${x}, chr(27)) THEN replace(replace(replace(${x}, chr(27) || 'B', chr(30)), chr(27) || 'C', chr(31)), chr(27) || 'A', chr(27)) ELSE ${x} END`;

function reEscape(text: string): string {
  return text.replace(/[\\^$.|?*+()[\]{}]/g, (c) => `\\${c}`);
}

/** RE2 class of SEARCH() token characters (see `searchTokens`), and of everything else on a line. */
const TOKEN_CLASS = '0-9a-z\\x{80}-\\x{10FFFF}';

export interface CompiledSql {
  /** A boolean SQL expression over the index table; never NULL. */
  sql: string;
  /** Values for its placeholders `$1`, `$2`, …; a caller adding its own parameters numbers them after these. */
  params: unknown[];
}

/** Compiles a filter to a DuckDB boolean expression over the index table (`INDEX_COLUMNS`). */
export function compileSql(filter: Filter): CompiledSql {
  const params: unknown[] = [];
  const p = (value: unknown): string => `$${params.push(value)}`;
  const sql = new SqlCompiler(p).expr(filter.root);
  return { sql, params };
}

type Bind = (value: unknown) => string;

class SqlCompiler {
  constructor(private readonly p: Bind) {}

  expr(e: Expr): string {
    const p = this.p;
    const { fields, fieldsLower } = INDEX_COLUMNS;
    switch (e.kind) {
      case 'all': return 'TRUE';
      case 'and': return `(${e.args.map((a) => this.expr(a)).join(' AND ')})`;
      case 'or': return `(${e.args.map((a) => this.expr(a)).join(' OR ')})`;
      case 'not': return `(NOT ${this.expr(e.arg)})`;
      case 'compare': return this.compare(e.path, e.op, e.value);
      case 'time': {
        const column = pathKey(e.path) === 'timestamp' ? INDEX_COLUMNS.timestamp : INDEX_COLUMNS.receiveTimestamp;
        return `COALESCE(${column} ${sqlOp(e.op)} make_timestamp(${p(e.micros)}::BIGINT), FALSE)`;
      }
      case 'rank': {
        if (pathKey(e.path) === 'severity') return `COALESCE(${INDEX_COLUMNS.severityRank} ${e.op} ${p(e.rank)}, FALSE)`;
        const cases = rankTable(e.path)!.map((name, i) => `WHEN ${p(name.toLowerCase())} THEN ${i}`).join(' ');
        return this.anyValue(fieldsLower, e.path, 's', (x) => `COALESCE(CASE ${x} ${cases} END ${e.op} ${p(e.rank)}, FALSE)`);
      }
      case 'present': {
        const path = encodePath(e.path);
        return `(contains(${fields}, ${p(RS + path)}) AND regexp_matches(${fields}, ${p(`${RS}${reEscape(path)}(?:\\.[^${US}]*)?${US}[snb]`)}))`;
      }
      case 'global': {
        const needle = escapeControls(e.text.toLowerCase());
        return `(contains(${fieldsLower}, ${p(needle)}) AND regexp_matches(${fieldsLower}, ${p(`${US}s[^${RS}]*${reEscape(needle)}`)}))`;
      }
      case 'search': {
        const pathPart = e.path ? `${reEscape(encodePath(e.path))}(?:\\.[^${US}]*)?` : `[^${US}]*`;
        const other = `[^${RS}${TOKEN_CLASS}]`;
        return `(${e.tokens.map((t) => `(contains(${fieldsLower}, ${p(t)}) AND regexp_matches(${fieldsLower}, ${p(
          `${RS}${pathPart}${US}s(?:[^${RS}]*${other})?${reEscape(t)}(?:${other}[^${RS}]*)?${RS}`,
        )}))`).join(' AND ')})`;
      }
      case 'ipInNet': return this.anyValue(fields, e.path, 's', (x) => `${IP_IN_NET_FUNCTION}(${DECODE(x)}, ${p(e.cidr)})`);
      case 'sample': {
        const threshold = sampleThreshold(e.fraction);
        return this.anyValue(fields, e.path, 's', (x) => `('0x' || substr(md5(${DECODE(x)}), 1, 8))::UBIGINT < ${p(threshold)}`);
      }
      case 'logId': return `ends_with(${INDEX_COLUMNS.logName}, ${p(logIdSuffix(e.logId))})`;
    }
  }

  private compare(path: FieldPath, op: Comparator, value: Literal): string {
    const p = this.p;
    const { fields, fieldsLower } = INDEX_COLUMNS;
    const line = (tag: string, text: string): string => p(`${RS}${encodePath(path)}${US}${tag}${text}${RS}`);
    if (op === '=~' || op === '!~') {
      const pattern = (value as { text: string }).text;
      const test = (x: string): string => `${op === '!~' ? 'NOT ' : ''}regexp_matches(${DECODE(x)}, ${p(pattern)})`;
      const any = this.anyValue(fields, path, 's', test);
      // A pattern that is plain text must occur literally: a cheap `contains` first spares most rows the regex.
      return op === '=~' && /^[A-Za-z0-9_\- /]+$/.test(pattern) ? `(contains(${fields}, ${p(pattern)}) AND ${any})` : any;
    }
    if (value.kind === 'null') {
      if (op === '=' || op === ':') return `contains(${fields}, ${line('z', '')})`;
      if (op === '!=') return `regexp_matches(${fields}, ${p(`${RS}${reEscape(encodePath(path))}${US}[snb]`)})`;
      return 'FALSE';
    }
    const column = columnFor(path);
    const lower = escapeControls(value.text.toLowerCase());
    const parts: string[] = [];
    if (column && (op === '=' || op === '!=' || op === ':')) {
      const folded = value.text.toLowerCase();
      parts.push(op === ':' ? `contains(${column}, ${p(folded)})` : `${column} ${sqlOp(op)} ${p(folded)}`);
    } else if (op === '=') {
      parts.push(`contains(${fieldsLower}, ${line('s', lower)})`);
    } else if (op === ':') {
      parts.push(`(contains(${fieldsLower}, ${p(lower)}) AND regexp_matches(${fieldsLower}, ${p(`${RS}${reEscape(encodePath(path))}${US}s[^${RS}]*${reEscape(lower)}`)}))`);
    } else if (op === '!=') {
      parts.push(this.anyValue(fieldsLower, path, 's', (x) => `${x} <> ${p(lower)}`));
    } else {
      parts.push(this.anyValue(fields, path, 's', (x) => `${DECODE(x)} ${op} ${p(value.text)}`));
    }
    if (value.number !== undefined && !column) {
      if (op === '=' || op === ':') parts.push(`contains(${fields}, ${line('n', String(value.number))})`);
      // The number travels as its round-trip text: a JS number parameter may be bound as an integer type.
      else parts.push(this.anyValue(fields, path, 'n', (x) => `CAST(${x} AS DOUBLE) ${sqlOp(op)} CAST(${p(String(value.number))} AS DOUBLE)`));
    }
    if (value.boolean !== undefined && !column) {
      if (op === '=' || op === ':') parts.push(`contains(${fields}, ${line('b', String(value.boolean))})`);
      else if (op === '!=') parts.push(`contains(${fields}, ${line('b', String(!value.boolean))})`);
    }
    return parts.length === 1 ? parts[0]! : `(${parts.join(' OR ')})`;
  }

  /** True when some `tag` leaf at `path` satisfies `test` (given the SQL name of the raw, still-escaped value). */
  private anyValue(column: string, path: FieldPath, tag: 's' | 'n', test: (x: string) => string): string {
    const head = `${RS}${encodePath(path)}${US}${tag}`;
    const extract = `regexp_extract_all(${column}, ${this.p(`${reEscape(`${RS}${encodePath(path)}${US}`)}${tag}([^${RS}]*)`)}, 1)`;
    return `(contains(${column}, ${this.p(head)}) AND len(list_filter(${extract}, x -> ${test('x')})) > 0)`;
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
