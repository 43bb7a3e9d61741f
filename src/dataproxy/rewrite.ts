/**
 * The security core: every reference to a protected table, wherever the parser finds it (FROM, JOIN, subqueries,
 * CTEs, set operations, EXISTS, COPY, PREPARE, DECLARE CURSOR, EXPLAIN), becomes its masked and filtered form
 * (a subquery, see masking.ts). For a masked session anything that cannot be rewritten safely is refused
 * (SQLSTATE 42501): writes, non-SELECT statements, functions that run SQL or read files, catalogs holding sample
 * values or other sessions' query text, views and relations the proxy cannot see through, children of protected
 * tables. Unmasked sessions pass through untouched.
 */
import { DataProxyError, refuse } from './errors.ts';
import { relationKey, type Catalog, type Relation } from './catalog.ts';
import type { Resolution, TablePlan } from './policy.ts';
import { deparseStatements, literal, parseStatements, type Node, type RawStatement } from './sql.ts';

export interface RewriteResult {
  /** The SQL to send upstream: the original text when nothing changed. */
  sql: string;
  changed: boolean;
  /** Protected tables this statement reads through their masked form (the event's transformations and filters). */
  tables: TablePlan[];
  /** Set when every relation read is a system catalog: the seed's `request.metadata`. */
  metadata?: string;
  /** SELECT / COPY TO / FETCH / EXECUTE: rows may leave (the `dataExport` category). */
  exportsRows: boolean;
  statementCount: number;
}

/** A relation name the catalog does not know: the caller refreshes the catalog once and retries. */
export class UnknownRelationError extends DataProxyError {
  constructor(readonly relation: string) {
    super('REFUSED', `relation "${relation}" is unknown to the data proxy (it may be a view over a protected table)`);
  }
}

export interface RewriteContext {
  catalog: Catalog;
  resolution: Resolution;
  /**
   * The masked form of a protected table, as a parsed SelectStmt node (fresh copy per call); with `only`, just the
   * columns named there (the statement reads no others), which keeps the statement the database plans small.
   */
  maskedRelation(plan: TablePlan, only?: ReadonlySet<string>): Node;
}

const SYSTEM_SCHEMAS = new Set(['pg_catalog', 'information_schema']);

/** System relations that hold sample values, other sessions' (rewritten) query text, or credentials. */
const DENIED_SYSTEM_RELATION = /^(pg_stat|pg_statio|pg_prepared_statements$|pg_cursors$|pg_authid$|pg_shadow$|pg_user_mapping|pg_largeobject|pg_file_settings$|pg_hba_file_rules$|pg_ident_file_mappings$|pg_replication|pg_subscription$|pg_backend_memory_contexts$|pg_settings$|pg_config$)/;

/** Built-in functions that run SQL given as text, read files or large objects, or reveal other sessions. */
const DENIED_FUNCTION = /^(query_to_xml|query_to_xmlschema|query_to_xml_and_xmlschema|table_to_xml|table_to_xmlschema|table_to_xml_and_xmlschema|schema_to_xml|schema_to_xmlschema|schema_to_xml_and_xmlschema|database_to_xml|database_to_xmlschema|database_to_xml_and_xmlschema|cursor_to_xml|cursor_to_xmlschema|ts_stat|ts_rewrite|pg_read_file|pg_read_binary_file|pg_ls_.*|pg_stat_.*|pg_file_.*|lo_.*|loread|lowrite|current_query|set_config|pg_cancel_backend|pg_terminate_backend|pg_reload_conf|pg_rotate_logfile|pg_logical_.*|pg_replication_.*|pg_create_.*|pg_drop_.*|pg_switch_wal|pg_promote|pg_backup_.*|dblink.*|nextval|setval|pg_advisory.*|pg_notify|pg_import_system_collations|pg_get_backend_memory_contexts|pg_log_backend_memory_contexts|pg_sleep.*|pg_current_logfile)$/;

/** Settings a masked session may not change: name resolution, identity, and how literals are read. */
const DENIED_SETTINGS = new Set(['search_path', 'role', 'session_authorization', 'standard_conforming_strings', 'session_replication_role', 'row_security', 'default_transaction_read_only']);

/** Statements a masked session may run as they are (no relation inside them). */
const PASS_STATEMENTS = new Set(['TransactionStmt', 'VariableShowStmt', 'ExecuteStmt', 'DeallocateStmt', 'ClosePortalStmt', 'FetchStmt', 'DiscardStmt']);

type Scope = ReadonlySet<string>;
const isObject = (v: unknown): v is Node => typeof v === 'object' && v !== null && !Array.isArray(v);
const strings = (list: unknown): string[] => (Array.isArray(list) ? list.map((n) => String((n as { String?: { sval?: string } }).String?.sval ?? '')) : []);

/** Column types whose `=` operator is leakproof in PostgreSQL (cannot raise an error that depends on the row). */
const LEAKPROOF_EQUALITY = /^(smallint|integer|bigint|numeric(\(.*\))?|text|character varying(\(\d+\))?|character(\(\d+\))?|boolean|date|timestamp( with(out)? time zone)?|uuid)$/;

/** `column = constant|parameter` conjuncts of a WHERE clause, with the column's name. */
function equalityConjuncts(where: unknown, alias: string): { column: string; value: Node }[] {
  if (!isObject(where)) return [];
  const bool = where['BoolExpr'] as Node | undefined;
  if (bool) return bool['boolop'] === 'AND_EXPR' ? (bool['args'] as unknown[]).flatMap((a) => equalityConjuncts(a, alias)) : [];
  const expr = where['A_Expr'] as Node | undefined;
  if (!expr || expr['kind'] !== 'AEXPR_OP' || strings(expr['name']).join('.') !== '=') return [];
  for (const [col, val] of [[expr['lexpr'], expr['rexpr']], [expr['rexpr'], expr['lexpr']]] as const) {
    const ref = isObject(col) ? (col['ColumnRef'] as Node | undefined) : undefined;
    const fields = ref ? (ref['fields'] as Node[]) : [];
    if (!ref || !fields.every((f) => 'String' in f)) continue;
    const names = strings(fields);
    if (names.length === 2 && names[0] !== alias) continue;
    if (names.length > 2) continue;
    const constant = isObject(val) && (('A_Const' in val && !(val['A_Const'] as Node)['isnull']) || 'ParamRef' in val);
    if (constant) return [{ column: names[names.length - 1]!, value: val as Node }];
  }
  return [];
}

/**
 * Every name a statement's column references use, or undefined when some reference could read every column of a
 * relation (`*`, `t.*`, a whole-row reference, `NATURAL` or `USING` joins): then no masked form is pruned.
 */
function referencedNames(stmt: Node, relationNames: Set<string>): Set<string> | undefined {
  const names = new Set<string>();
  let all = false;
  const walk = (v: unknown): void => {
    if (all) return;
    if (Array.isArray(v)) return v.forEach(walk);
    if (!isObject(v)) return;
    const ref = v['ColumnRef'] as Node | undefined;
    if (ref) {
      const fields = ref['fields'] as Node[];
      if (fields.some((f) => 'A_Star' in f)) all = true;
      const parts = strings(fields);
      if (parts.length === 1 && relationNames.has(parts[0]!)) all = true;
      for (const p of parts) names.add(p);
    }
    const join = v['JoinExpr'] as Node | undefined;
    if (join && (join['isNatural'] || join['usingClause'])) all = true;
    for (const child of Object.values(v)) walk(child);
  };
  walk(stmt);
  return all ? undefined : names;
}

/** Relation names and aliases in a statement: a single-field reference to one of them is a whole-row reference. */
function relationNamesOf(stmt: Node): Set<string> {
  const out = new Set<string>();
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) return v.forEach(walk);
    if (!isObject(v)) return;
    const rv = v['RangeVar'] as Node | undefined;
    if (rv) {
      out.add(String(rv['relname']));
      const alias = (rv['alias'] as Node | undefined)?.['aliasname'];
      if (alias) out.add(String(alias));
    }
    for (const child of Object.values(v)) walk(child);
  };
  walk(stmt);
  return out;
}

class StatementRewriter {
  changed = false;
  /** Column names the statement being rewritten can read (undefined: all). */
  private readable: Set<string> | undefined;
  /**
   * Equality predicates of a single-table SELECT on a filtered table that may also run inside the filter fence,
   * so an index on them is used (they are leakproof, so running before the row filter reveals nothing).
   */
  private readonly pushdown = new Map<Node, { column: string; value: Node }[]>();
  readonly tables = new Map<string, TablePlan>();
  readonly relations: Relation[] = [];

  constructor(private readonly ctx: RewriteContext) {}

  statement(stmt: Node): Node {
    this.readable = referencedNames(stmt, relationNamesOf(stmt));
    const [type, body] = Object.entries(stmt)[0] as [string, Node];
    switch (type) {
      case 'SelectStmt':
        if (body['intoClause']) throw refuse('SELECT INTO writes a table and is not allowed for masked users');
        if (body['lockingClause']) throw refuse('SELECT … FOR UPDATE/SHARE locks rows and is not allowed for masked users');
        return this.visit(stmt, new Set(), 'other');
      case 'DeclareCursorStmt':
      case 'PrepareStmt': {
        const query = body['query'] as Node;
        if (!query || !('SelectStmt' in query)) throw refuse(`${type === 'PrepareStmt' ? 'PREPARE' : 'DECLARE'} is only allowed for SELECT statements for masked users`);
        return { [type]: { ...body, query: this.statement(query) } };
      }
      case 'ExplainStmt': {
        const inner = this.statement(body['query'] as Node);
        // The plan of a masked query shows filter expressions and tokenization keys: only unprotected queries.
        if (this.tables.size > 0) throw refuse('EXPLAIN of a query reading a protected table is not allowed');
        return { ExplainStmt: { ...body, query: inner } };
      }
      case 'CopyStmt':
        return { CopyStmt: this.copy(body) };
      case 'VariableSetStmt': {
        const name = String(body['name'] ?? '').toLowerCase();
        if (DENIED_SETTINGS.has(name)) throw refuse(`SET ${name} is not allowed for masked users`);
        return stmt;
      }
      default:
        if (PASS_STATEMENTS.has(type)) return stmt;
        throw refuse(`${type.replace(/Stmt$/, '')} statements are not allowed for masked users (only reads can be masked)`);
    }
  }

  private copy(body: Node): Node {
    if (body['is_from']) throw refuse('COPY FROM writes a table and is not allowed for masked users');
    if (body['filename'] !== undefined || body['is_program']) throw refuse('COPY to a server file or program is not allowed');
    if (body['query']) return { ...body, query: this.statement(body['query'] as Node) };
    // COPY table TO STDOUT → COPY (SELECT cols FROM table) TO STDOUT, so the table can be replaced by its masked form.
    const relation = body['relation'] as Node;
    const columns = strings(body['attlist']);
    const targetList = columns.length > 0
      ? columns.map((c) => ({ ResTarget: { val: { ColumnRef: { fields: [{ String: { sval: c } }] } } } }))
      : [{ ResTarget: { val: { ColumnRef: { fields: [{ A_Star: {} }] } } } }];
    const select: Node = { SelectStmt: { targetList, fromClause: [{ RangeVar: relation }], limitOption: 'LIMIT_OPTION_DEFAULT', op: 'SETOP_NONE' } };
    const rewritten = this.statement(select);
    if (!this.changed) return body;
    const { relation: _r, attlist: _a, ...rest } = body;
    return { ...rest, query: rewritten };
  }

  /** Walks any node; `position` is 'from' where a RangeVar may be replaced by a subquery. */
  private visit<T>(value: T, scope: Scope, position: 'from' | 'other'): T {
    if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) value[i] = this.visit(value[i], scope, position);
      return value;
    }
    if (!isObject(value)) return value;
    const keys = Object.keys(value);
    if (keys.length === 1) {
      const type = keys[0]!;
      const body = value[type];
      if (isObject(body)) {
        switch (type) {
          case 'RangeVar':
            return this.rangeVar(body, scope, position) as T;
          case 'FuncCall':
            this.checkFunction(body);
            break;
          case 'InsertStmt':
          case 'UpdateStmt':
          case 'DeleteStmt':
          case 'MergeStmt':
            throw refuse('data-modifying statements are not allowed for masked users');
          case 'SelectStmt': {
            if (body['intoClause'] || body['lockingClause']) throw refuse('SELECT INTO / FOR UPDATE is not allowed for masked users');
            const from = body['fromClause'] as Node[] | undefined;
            const rv = from?.length === 1 ? (from[0]!['RangeVar'] as Node | undefined) : undefined;
            if (rv) {
              const alias = String((rv['alias'] as Node | undefined)?.['aliasname'] ?? rv['relname']);
              const conjuncts = equalityConjuncts(body['whereClause'], alias);
              if (conjuncts.length > 0) this.pushdown.set(rv, conjuncts);
            }
            break;
          }
        }
      }
    }
    let inner = scope;
    const withClause = value['withClause'] as { WithClause?: Node } | Node | undefined;
    if (withClause) inner = this.withClause((withClause as { WithClause?: Node }).WithClause ?? (withClause as Node), scope);
    for (const key of keys) {
      if (key === 'withClause') continue;
      const childPosition = key === 'fromClause' || key === 'larg' || key === 'rarg' ? 'from' : 'other';
      (value as Node)[key] = this.visit(value[key], inner, childPosition);
    }
    return value;
  }

  /** CTE names shadow unqualified relation names: each CTE sees the earlier ones (all of them when RECURSIVE). */
  private withClause(clause: Node, scope: Scope): Scope {
    const ctes = (clause['ctes'] as { CommonTableExpr: Node }[] | undefined) ?? [];
    const names = ctes.map((c) => String(c.CommonTableExpr['ctename']));
    const all = new Set([...scope, ...names]);
    ctes.forEach((c, i) => {
      const visible = clause['recursive'] ? all : new Set([...scope, ...names.slice(0, i)]);
      c.CommonTableExpr['ctequery'] = this.visit(c.CommonTableExpr['ctequery'], visible, 'other');
    });
    return all;
  }

  private checkFunction(body: Node): void {
    const parts = strings(body['funcname']);
    const name = parts[parts.length - 1]!.toLowerCase();
    const schema = parts.length > 1 ? parts[parts.length - 2] : undefined;
    if (schema && schema !== 'pg_catalog') throw refuse(`function ${parts.join('.')} is not a built-in function`);
    if (DENIED_FUNCTION.test(name)) throw refuse(`function ${name} can read data around the masking and is not allowed`);
    if (!this.ctx.catalog.isBuiltinFunction(name)) throw refuse(`function ${name} is not a built-in function`);
  }

  private rangeVar(rv: Node, scope: Scope, position: 'from' | 'other'): Node {
    const schema = rv['schemaname'] as string | undefined;
    const name = String(rv['relname']);
    if (!schema && scope.has(name)) return { RangeVar: rv };
    const rel = this.ctx.catalog.resolve(schema, name);
    if (!rel) throw new UnknownRelationError(schema ? `${schema}.${name}` : name);
    this.relations.push(rel);
    const key = relationKey(rel.schema, rel.name);
    const plan = this.ctx.resolution.plans.get(key);
    if (plan) {
      if (position !== 'from') throw refuse(`protected table ${key} cannot be read here (only in FROM and JOIN)`);
      this.tables.set(key, plan);
      if (this.readsAsStored(plan)) return { RangeVar: rv };
      this.changed = true;
      const subquery = this.ctx.maskedRelation(plan, this.readable);
      if (plan.filters.length > 0 || plan.denyAll) this.pushIntoFence(subquery, plan, rv);
      return { RangeSubselect: { subquery, alias: rv['alias'] ?? { aliasname: rel.name } } };
    }
    if (rel.ancestors.some((a) => this.ctx.resolution.plans.has(a))) throw refuse(`${key} inherits rows from a protected table`);
    if (SYSTEM_SCHEMAS.has(rel.schema)) {
      if (DENIED_SYSTEM_RELATION.test(rel.name)) throw refuse(`${key} holds sample values or query text and is not allowed for masked users`);
      const hiding = this.hideDroppedColumns(rel, rv, position);
      if (hiding) return hiding;
      return { RangeVar: rv };
    }
    if (rel.kind !== 'r' && rel.kind !== 'p') throw refuse(`${key} is a ${rel.kind === 'v' ? 'view' : rel.kind === 'm' ? 'materialized view' : rel.kind === 'f' ? 'foreign table' : 'sequence'} the proxy cannot see through`);
    return { RangeVar: rv };
  }

  /**
   * Whether the statement reads `plan`'s table only where its masked form equals the table: every row (no filter)
   * and, of the columns the statement names anywhere, none that a rule transforms (`retain` keeps a value as it is).
   * Then the table stays as it is: the database plans the query as the client wrote it.
   */
  private readsAsStored(plan: TablePlan): boolean {
    if (!this.readable || plan.filters.length > 0 || plan.denyAll) return false;
    for (const [column, rule] of plan.fields) if (this.readable.has(column) && !('retain' in rule.transformation)) return false;
    return true;
  }

  private pushIntoFence(subquery: Node, plan: TablePlan, rv: Node): void {
    const columns = this.ctx.catalog.columnsOf(plan.key) ?? [];
    const safe = (this.pushdown.get(rv) ?? []).filter(({ column }) => {
      const rule = plan.fields.get(column);
      const type = columns.find((c) => c.name === column)?.type;
      return type !== undefined && LEAKPROOF_EQUALITY.test(type) && (!rule || 'retain' in rule.transformation);
    });
    if (safe.length === 0) return;
    const outer = subquery['SelectStmt'] as Node;
    const inner = ((outer['fromClause'] as Node[])[0]!['RangeSubselect'] as Node)['subquery'] as Node;
    const select = inner['SelectStmt'] as Node;
    const added = safe.map(({ column, value }) => ({
      A_Expr: { kind: 'AEXPR_OP', name: [{ String: { sval: '=' } }], lexpr: { ColumnRef: { fields: [{ String: { sval: column } }] } }, rexpr: structuredClone(value) },
    }));
    select['whereClause'] = { BoolExpr: { boolop: 'AND_EXPR', args: [select['whereClause'], ...added] } };
  }

  /** Column listings (pg_attribute, information_schema.columns) without the fields a policy drops. */
  private hideDroppedColumns(rel: Relation, rv: Node, position: 'from' | 'other'): Node | undefined {
    const isAttribute = rel.schema === 'pg_catalog' && rel.name === 'pg_attribute';
    const isColumns = rel.schema === 'information_schema' && rel.name === 'columns';
    if (!isAttribute && !isColumns) return undefined;
    const hidden: string[] = [];
    for (const plan of this.ctx.resolution.plans.values()) {
      const dropped = [...plan.fields.values()].filter((r) => 'drop' in r.transformation).map((r) => literal(r.field.field));
      if (dropped.length === 0) continue;
      if (isAttribute) {
        const oid = this.ctx.catalog.resolve(plan.schema, plan.table)?.oid;
        if (oid !== undefined) hidden.push(`(attrelid = ${oid} AND attname IN (${dropped.join(', ')}))`);
      } else {
        hidden.push(`(table_schema = ${literal(plan.schema)} AND table_name = ${literal(plan.table)} AND column_name IN (${dropped.join(', ')}))`);
      }
    }
    if (hidden.length === 0) return undefined;
    if (position !== 'from') throw refuse(`${rel.schema}.${rel.name} cannot be read here`);
    const select = parseStatements(`SELECT * FROM ${rel.schema}.${rel.name} WHERE NOT (${hidden.join(' OR ')})`)[0]!.stmt;
    this.changed = true;
    return { RangeSubselect: { subquery: select, alias: rv['alias'] ?? { aliasname: rel.name } } };
  }
}

function metadataKind(relations: Relation[]): string | undefined {
  if (relations.length === 0 || relations.some((r) => !SYSTEM_SCHEMAS.has(r.schema))) return undefined;
  const names = new Set(relations.map((r) => r.name));
  if (names.has('pg_attribute') || names.has('columns')) return 'get columns';
  if (names.has('pg_class') || names.has('tables')) return 'get tables';
  if (names.has('pg_namespace') || names.has('schemata')) return 'get schemas';
  return 'get metadata';
}

const EXPORTING = new Set(['SelectStmt', 'CopyStmt', 'FetchStmt', 'ExecuteStmt', 'DeclareCursorStmt']);

/** Parse-tree JSON without positions, to compare a tree with the parse of its deparsed text. */
function withoutPositions(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutPositions);
  if (!isObject(value)) return value;
  const out: Node = {};
  for (const [k, v] of Object.entries(value)) {
    if (k === 'location' || k === 'stmt_location' || k === 'stmt_len' || k.endsWith('_start') || k.endsWith('_end')) continue;
    out[k] = withoutPositions(v);
  }
  return out;
}

/**
 * Rewrites one query string (one or more statements). Throws a REFUSED DataProxyError when a statement cannot be
 * made safe, an UnknownRelationError when the catalog may be stale, SYNTAX when it does not parse.
 */
export function rewriteQuery(sql: string, ctx: RewriteContext, parsed?: RawStatement[]): RewriteResult {
  const stmts = parsed ?? parseStatements(sql);
  if (!ctx.resolution.masked) {
    return { sql, changed: false, tables: [], exportsRows: stmts.some((s) => EXPORTING.has(Object.keys(s.stmt)[0]!)), statementCount: stmts.length };
  }
  const rewriter = new StatementRewriter(ctx);
  const out = stmts.map((s) => rewriter.statement(s.stmt));
  let text = sql;
  if (rewriter.changed) {
    text = deparseStatements(out);
    // Fail closed on a deparser slip: the text sent upstream must parse back to exactly the tree that was checked.
    const reparsed = parseStatements(text).map((s) => s.stmt);
    if (JSON.stringify(withoutPositions(reparsed)) !== JSON.stringify(withoutPositions(out))) {
      throw refuse('the rewritten statement does not deparse faithfully; refusing rather than guessing');
    }
  }
  return {
    sql: text,
    changed: rewriter.changed,
    tables: [...rewriter.tables.values()],
    metadata: metadataKind(rewriter.relations),
    exportsRows: stmts.some((s) => EXPORTING.has(Object.keys(s.stmt)[0]!)),
    statementCount: stmts.length,
  };
}
