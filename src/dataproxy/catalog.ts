/**
 * What the proxy knows of the upstream database: every relation (schema, name, kind), the columns of protected
 * tables, inheritance (partitions and children of a protected table read its rows), the built-in function names
 * and the upstream session's search_path. Resolution of a statement's relation names runs against this snapshot;
 * a name it does not know is refreshed once and then refused (fail closed).
 */
import { componentLogger } from '../telemetry/index.ts';

export interface Relation {
  oid: number;
  schema: string;
  name: string;
  /** pg_class.relkind: r table, p partitioned table, v view, m materialized view, f foreign table, S sequence. */
  kind: string;
  /** Set when the relation inherits (directly or not) from another relation: its topmost ancestors' keys. */
  ancestors: string[];
}

export interface Column {
  name: string;
  type: string;
}

/** Runs one SQL statement upstream with the proxy's own credentials and returns its rows. */
export type SqlRunner = (sql: string) => Promise<Record<string, unknown>[]>;

export const relationKey = (schema: string, name: string): string => `${schema}.${name}`;

const REFRESH_MIN_INTERVAL_MS = 1000;

export class Catalog {
  private relations = new Map<string, Relation>();
  private columns = new Map<string, Column[]>();
  private builtinFunctions = new Set<string>();
  searchPath: string[] = ['public'];
  /** Changes on every load, so caches keyed by it forget rewrites made against an older snapshot. */
  generation = 0;
  private lastLoad = 0;
  private loading: Promise<void> | undefined;
  private readonly log = componentLogger('dataproxy-catalog');

  constructor(
    private readonly run: SqlRunner,
    private readonly protectedTables: () => Set<string>,
  ) {}

  async load(): Promise<void> {
    this.loading ??= this.loadOnce().finally(() => (this.loading = undefined));
    return this.loading;
  }

  private async loadOnce(): Promise<void> {
    const rels = await this.run(
      `SELECT c.oid::int8 AS oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS kind
       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r','p','v','m','f','S')`,
    );
    const inherits = await this.run(
      `WITH RECURSIVE up(child, parent) AS (SELECT inhrelid, inhparent FROM pg_catalog.pg_inherits
         UNION SELECT up.child, i.inhparent FROM up JOIN pg_catalog.pg_inherits i ON i.inhrelid = up.parent)
       SELECT child::int8 AS child, parent::int8 AS parent FROM up`,
    );
    const byOid = new Map<number, Relation>();
    const relations = new Map<string, Relation>();
    for (const r of rels) {
      const rel: Relation = { oid: Number(r['oid']), schema: String(r['schema']), name: String(r['name']), kind: String(r['kind']), ancestors: [] };
      byOid.set(rel.oid, rel);
      relations.set(relationKey(rel.schema, rel.name), rel);
    }
    for (const i of inherits) {
      const child = byOid.get(Number(i['child']));
      const parent = byOid.get(Number(i['parent']));
      if (child && parent) child.ancestors.push(relationKey(parent.schema, parent.name));
    }
    const wanted = [...this.protectedTables()].map((k) => relations.get(k)?.oid).filter((o): o is number => o !== undefined);
    const columns = new Map<string, Column[]>();
    if (wanted.length > 0) {
      const cols = await this.run(
        `SELECT a.attrelid::int8 AS rel, a.attname AS name, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type
         FROM pg_catalog.pg_attribute a WHERE a.attrelid IN (${wanted.join(',')}) AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attrelid, a.attnum`,
      );
      for (const c of cols) {
        const rel = byOid.get(Number(c['rel']))!;
        const key = relationKey(rel.schema, rel.name);
        const list = columns.get(key) ?? [];
        list.push({ name: String(c['name']), type: String(c['type']) });
        columns.set(key, list);
      }
    }
    const functions = await this.run(`SELECT DISTINCT proname AS name FROM pg_catalog.pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace`);
    const path = await this.run(`SELECT pg_catalog.array_to_string(pg_catalog.current_schemas(false), ',') AS path`);
    this.relations = relations;
    this.columns = columns;
    this.builtinFunctions = new Set(functions.map((f) => String(f['name'])));
    this.searchPath = String(path[0]?.['path'] ?? 'public').split(',').filter(Boolean);
    this.lastLoad = Date.now();
    this.generation++;
    this.log.debug({ relations: relations.size, protectedWithColumns: columns.size }, 'catalog loaded');
  }

  /** Reloads when the last load is older than a second (bounded, so unknown names cannot hammer the upstream). */
  async refresh(): Promise<boolean> {
    if (Date.now() - this.lastLoad < REFRESH_MIN_INTERVAL_MS) return false;
    await this.load();
    return true;
  }

  /** A relation by schema (or, unqualified, by pg_catalog then the search_path, as PostgreSQL resolves it). */
  resolve(schema: string | undefined, name: string): Relation | undefined {
    if (schema) return this.relations.get(relationKey(schema, name));
    for (const s of ['pg_catalog', ...this.searchPath]) {
      const rel = this.relations.get(relationKey(s, name));
      if (rel) return rel;
    }
    return undefined;
  }

  columnsOf(key: string): Column[] | undefined {
    return this.columns.get(key);
  }

  isBuiltinFunction(name: string): boolean {
    return this.builtinFunctions.has(name);
  }
}
