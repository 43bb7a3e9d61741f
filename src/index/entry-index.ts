import {
  BOOLEAN, type DuckDBAppender, DuckDBConnection, DuckDBInstance, DuckDBScalarFunction, DuckDBTimestampValue, VARCHAR,
} from '@duckdb/node-api';
import type { LogEntry } from '../model/index.ts';
import { epochMicros, parseTimestamp } from '../model/index.ts';
import {
  canonicalForm, compileSql, indexedColumns, ipInNet, IP_IN_NET_FUNCTION, parseFilter, QueryError,
} from '../query/index.ts';
import { componentLogger } from '../telemetry/index.ts';
import { decodePageToken, encodePageToken, queryDigest } from './page-token.ts';

const log = componentLogger('index');

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 1000;

export interface ListRequest {
  organization: string;
  filter?: string;
  orderBy?: 'timestamp desc' | 'timestamp asc';
  pageSize?: number;
  pageToken?: string;
  /** Only entries whose logName starts with one of these (compared without case, like logName =). */
  logNamePrefixes?: string[];
  /** Only entries at or after this RFC 3339 time (`--freshness`). */
  since?: string;
}

/** The closed set of index failures (a bad filter or page token is a QueryError instead). */
export type IndexErrorCode = 'INDEX_GAP' | 'INDEX_UNCOMMITTED';

export class IndexError extends Error {
  override readonly name = 'IndexError';
  constructor(readonly code: IndexErrorCode, message: string) {
    super(message);
  }
}

/** One ledger entry to index: the entry, its JSON text, or both (the text is stored; the entry is parsed from it if absent). */
export type IndexRow = {
  /** The entry's ledger index within its organization. */
  index: number;
} & ({ entry: LogEntry; json?: string } | { entry?: undefined; json: string });

/**
 * Rows are held in one open appender and committed when this many have gathered (DuckDB's row group size: a commit
 * that large is written straight to row groups in the table file instead of through the write-ahead log, about
 * half the work), before any read, and at most `FLUSH_MAX_AGE_MS` after the first of them arrived.
 */
const FLUSH_ROWS = 122_880;
const FLUSH_MAX_AGE_MS = 5_000;

export interface ListResponse {
  entries: LogEntry[];
  nextPageToken?: string;
}

/**
 * The index table. One row per ledger entry; `entry` is the stored entry as JSON, the other columns are derived
 * from it (see `indexedColumns` in src/query/sql.ts) so filters compile to scans of narrow columns: `ts` first
 * among the filters, because rows arrive in ledger (≈ time) order and DuckDB's per-row-group min/max (zone maps)
 * then skip everything outside a time range.
 */
const SCHEMA = `
CREATE TABLE IF NOT EXISTS entries (
  org VARCHAR NOT NULL,
  idx BIGINT NOT NULL,
  ts TIMESTAMP NOT NULL,
  receive_ts TIMESTAMP NOT NULL,
  severity_rank TINYINT NOT NULL,
  log_name VARCHAR NOT NULL,
  resource_type VARCHAR NOT NULL,
  insert_id VARCHAR NOT NULL,
  entry VARCHAR NOT NULL,
  fields VARCHAR NOT NULL,
  fields_folded VARCHAR NOT NULL
)`;

/** The DuckDB index: derived from the ledger and rebuildable; holds nothing the ledger does not. */
export class EntryIndex {
  /** Next ledger index not yet indexed, per organization (read from the table once, then kept). */
  private readonly nextIndex = new Map<string, number>();
  /** Inserts run one at a time, so the idempotence check and the append cannot interleave. */
  private writes: Promise<unknown> = Promise.resolve();
  private appender: DuckDBAppender | undefined;
  private unflushedRows = 0;
  private ageFlush: NodeJS.Timeout | undefined;
  /** A commit that failed in the background: the next `list` reports it, so its caller can feed the rows again. */
  private lostCommit: IndexError | undefined;

  private constructor(
    private readonly instance: DuckDBInstance,
    private readonly writer: DuckDBConnection,
    private readonly reader: DuckDBConnection,
  ) {}

  static async open(path: string): Promise<EntryIndex> {
    const instance = await DuckDBInstance.create(path);
    const writer = await instance.connect();
    await writer.run(SCHEMA);
    const reader = await instance.connect();
    reader.registerScalarFunction(DuckDBScalarFunction.create({
      name: IP_IN_NET_FUNCTION,
      returnType: BOOLEAN,
      parameterTypes: [VARCHAR, VARCHAR],
      mainFunction: (_info, input, output) => {
        const addresses = input.getColumnVector(0), cidrs = input.getColumnVector(1);
        for (let i = 0; i < input.rowCount; i++) {
          output.setItem(i, ipInNet(String(addresses.getItem(i)), String(cidrs.getItem(i))));
        }
        output.flush();
      },
    }));
    log.debug({ path }, 'index opened');
    return new EntryIndex(instance, writer, reader);
  }

  /**
   * Appends entries of one organization; rows whose ledger index is already indexed are skipped. `json`, when
   * given, must be the entry's JSON text (the ledger's canonical form will do) and spares serializing it again.
   * Rows count as indexed at once (`indexedSize`) and are committed before the next `list` reads the table.
   */
  insert(org: string, rows: IndexRow[]): Promise<void> {
    return this.serialized(() => this.append(org, rows));
  }

  /**
   * `insert` of consecutive entries from ledger index `first`, given as their JSON texts joined by line feeds, in one
   * or more runs (the runs are not joined into one: that would copy every byte once more).
   */
  insertRun(org: string, first: number, runs: readonly string[]): Promise<void> {
    return this.insert(org, runRows(first, runs));
  }

  /** Runs `task` after every earlier insert, flush and cursor read, so none of them interleave. */
  private serialized<T>(task: () => Promise<T> | T): Promise<T> {
    const run = this.writes.then(task);
    this.writes = run.catch(() => undefined);
    return run;
  }

  private async append(org: string, rows: IndexRow[]): Promise<void> {
    let next = await this.readIndexedSize(org);
    const fresh: IndexRow[] = [];
    for (const row of [...rows].sort((a, b) => a.index - b.index)) {
      if (row.index < next) continue; // already indexed: a retried or replayed batch
      if (row.index > next) {
        throw new IndexError('INDEX_GAP', `organization ${org}: expected ledger index ${next}, got ${row.index}; the index follows the ledger without gaps`);
      }
      fresh.push(row);
      next++;
    }
    if (fresh.length === 0) return;
    this.appender ??= await this.writer.createAppender('entries');
    const appender = this.appender;
    try {
      for (const row of fresh) {
        const entry = row.entry ?? (JSON.parse(row.json as string) as LogEntry);
        const c = indexedColumns(entry);
        appender.appendVarchar(org);
        appender.appendBigInt(BigInt(row.index));
        appender.appendTimestamp(new DuckDBTimestampValue(BigInt(c.tsMicros)));
        appender.appendTimestamp(new DuckDBTimestampValue(BigInt(c.receiveTsMicros)));
        appender.appendTinyInt(c.severityRank);
        appender.appendVarchar(c.logName);
        appender.appendVarchar(c.resourceType);
        appender.appendVarchar(String(entry.insertId ?? ''));
        appender.appendVarchar(row.json ?? JSON.stringify(entry));
        appender.appendVarchar(c.fields);
        appender.appendVarchar(c.fieldsFolded);
        appender.endRow();
      }
      this.unflushedRows += fresh.length;
      this.nextIndex.set(org, next);
      if (this.unflushedRows >= FLUSH_ROWS) this.flush();
      else this.ageFlush ??= setTimeout(() => {
        this.serialized(() => this.flush()).catch((err: unknown) => {
          log.error({ err }, 'index commit failed');
          if (err instanceof IndexError) this.lostCommit = err;
        });
      }, FLUSH_MAX_AGE_MS).unref();
    } catch (e) {
      this.discardAppender();
      throw e;
    }
  }

  /**
   * Commits the rows gathered in the appender. If DuckDB refuses (a full disk, say), they are dropped and the
   * cursors are read from the table again; the error says so, and the caller feeds them again from the ledger.
   */
  private flush(): void {
    clearTimeout(this.ageFlush);
    this.ageFlush = undefined;
    if (!this.appender || this.unflushedRows === 0) return;
    try {
      this.appender.flushSync();
      this.unflushedRows = 0;
    } catch (e) {
      const dropped = this.unflushedRows;
      this.discardAppender();
      throw new IndexError('INDEX_UNCOMMITTED', `the index could not commit ${dropped} rows (${(e as Error).message}); they must be indexed again from the ledger`);
    }
  }

  /** After a failed append or flush the cursors cannot be trusted: they are read from the table again. */
  private discardAppender(): void {
    clearTimeout(this.ageFlush);
    this.ageFlush = undefined;
    try {
      this.appender?.closeSync();
    } catch {
      // the appender already failed; what it held is dropped and re-indexed from the ledger
    }
    this.appender = undefined;
    this.unflushedRows = 0;
    this.nextIndex.clear();
  }

  /** The next ledger index not yet indexed for `org`: where catch-up from the ledger starts after a crash. */
  indexedSize(org: string): Promise<number> {
    // Queued behind inserts: a concurrent read of max(idx) must not overwrite the cursor an insert just moved.
    return this.serialized(() => this.readIndexedSize(org));
  }

  private async readIndexedSize(org: string): Promise<number> {
    const known = this.nextIndex.get(org);
    if (known !== undefined) return known;
    this.flush();
    const reader = await this.writer.runAndReadAll('SELECT max(idx) AS m FROM entries WHERE org = $1', [org]);
    const max = reader.getRowObjectsJS()[0]?.['m'];
    const next = max === null || max === undefined ? 0 : Number(max) + 1;
    this.nextIndex.set(org, next);
    return next;
  }

  async list(request: ListRequest): Promise<ListResponse> {
    await this.serialized(() => {
      const lost = this.lostCommit;
      this.lostCommit = undefined;
      if (lost) throw lost;
      this.flush();
    });
    const order = request.orderBy === 'timestamp asc' ? 'asc' : 'desc';
    const pageSize = clampPageSize(request.pageSize);
    const filter = parseFilter(request.filter ?? '');
    const prefixes = (request.logNamePrefixes ?? []).map((p) => p.toLowerCase());
    const since = request.since === undefined ? undefined : sinceMicros(request.since);
    const digest = queryDigest([canonicalForm(filter), prefixes, since ?? null]);
    const compiled = compileSql(filter);
    const params: unknown[] = [...compiled.params];
    const bind = (value: unknown): string => `$${params.push(value)}`;
    const where = [`org = ${bind(request.organization)}`, compiled.sql];
    if (since !== undefined) where.push(`ts >= make_timestamp(${bind(since)}::BIGINT)`);
    if (prefixes.length > 0) where.push(`(${prefixes.map((p) => `starts_with(log_name, ${bind(p)})`).join(' OR ')})`);
    if (request.pageToken) {
      const cursor = decodePageToken(request.pageToken, { organization: request.organization, order, query: digest });
      const cmp = order === 'desc' ? '<' : '>';
      const at = `make_timestamp(${bind(cursor.tsMicros)}::BIGINT)`;
      where.push(`(ts ${cmp} ${at} OR (ts = ${at} AND idx ${cmp} ${bind(cursor.index)}))`);
    }
    const sql = `SELECT entry, epoch_us(ts) AS t, idx FROM entries WHERE ${where.join(' AND ')}
      ORDER BY ts ${order}, idx ${order} LIMIT ${pageSize + 1}`;
    const reader = await this.reader.runAndReadAll(sql, params as never);
    const rows = reader.getRowsJS() as [string, bigint | number, bigint | number][];
    const page = rows.slice(0, pageSize);
    const response: ListResponse = { entries: page.map(([json]) => JSON.parse(json) as LogEntry) };
    const last = page[page.length - 1];
    if (rows.length > pageSize && last) {
      response.nextPageToken = encodePageToken({
        organization: request.organization, order, tsMicros: Number(last[1]), index: Number(last[2]), query: digest,
      });
    }
    return response;
  }

  /** Empties the index (one organization, or all) for `custos reindex`. */
  clear(org?: string): Promise<void> {
    return this.serialized(async () => {
      this.flush();
      if (org === undefined) {
        await this.writer.run('DELETE FROM entries');
        this.nextIndex.clear();
      } else {
        await this.writer.run('DELETE FROM entries WHERE org = $1', [org]);
        this.nextIndex.delete(org);
      }
    });
  }

  async close(): Promise<void> {
    await this.serialized(() => {
      try {
        this.flush();
      } catch (err) {
        // the rows it held are indexed again from the ledger at the next start; the connections still close
        log.error({ err }, 'index commit failed at close');
      }
      this.appender?.closeSync();
      this.appender = undefined;
    });
    this.reader.closeSync();
    this.writer.closeSync();
    this.instance.closeSync();
  }
}

function clampPageSize(size: number | undefined): number {
  if (size === undefined || !Number.isFinite(size) || size <= 0) return DEFAULT_PAGE_SIZE;
  return Math.min(MAX_PAGE_SIZE, Math.floor(size));
}

function sinceMicros(text: string): number {
  const parsed = parseTimestamp(text);
  if (!parsed) throw new QueryError('BAD_TIMESTAMP', `since: expected an RFC 3339 timestamp, got ${JSON.stringify(text)}`);
  return epochMicros(parsed);
}

/**
 * The rows of a run: JSON text one entry per line (JSON text never holds a raw line feed), with ledger indexes from
 * `first`.
 */
export function runRows(first: number, runs: readonly string[]): IndexRow[] {
  const rows: IndexRow[] = [];
  for (const run of runs) for (const json of run.split('\n')) rows.push({ index: first + rows.length, json });
  return rows;
}
