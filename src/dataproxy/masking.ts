/**
 * A protected table's masked and filtered form, as SQL the upstream database evaluates:
 *
 *   SELECT <masked column>…
 *   FROM (SELECT * FROM schema.table AS row WHERE <filters> OFFSET 0) AS row,
 *        LATERAL (SELECT <token hash>… OFFSET 0) AS hash
 *
 * The inner query applies the record-level filters; `OFFSET 0` keeps the planner from pushing the user's own
 * predicates below them (the "leaky view" problem: a user function that raises on a value would otherwise see
 * filtered rows). Without filters the table is read directly, so the user's predicates on retained columns reach
 * its indexes. The lateral subquery computes each row's token hashes once (its own `OFFSET 0` stops the planner
 * from copying the hash expression into every character of the token). The outer list applies each field's
 * transformation, so the user's query only ever sees masked values. Dropped fields are simply absent.
 */
import { createHmac } from 'node:crypto';
import type { Column } from './catalog.ts';
import type { SingleFieldTransformationConfig, TransformationConfig } from './config.ts';
import type { Principal, TablePlan } from './policy.ts';
import { identifier, literal } from './sql.ts';
import { compileTokenPattern, tokenBlocks, tokenFromBlocks, tokenSql } from './tokens.ts';

const ROW = '"__custos_row"';
const HASH = '"__custos_hash"';
const NUMERIC_TYPES = /^(smallint|integer|bigint|real|double precision|numeric(\(.*\))?)$/;

export interface MaskingKeys {
  /** The per-deployment tokenization secret: tokens are HMAC-SHA-256 under keys derived from it. */
  secret: Buffer;
}

/** The key of one consistency group: equal inputs give equal tokens within a group, unrelated tokens across. */
function groupKey(keys: MaskingKeys, group: string): Buffer {
  return createHmac('sha256', keys.secret).update(`custos-consistency:${group}`).digest();
}

const hex = (b: Buffer): string => `pg_catalog.decode('${b.toString('hex')}', 'hex')`;

/** HMAC-SHA-256 (RFC 2104) of the value's text under `key`, written with the server's own sha256(). */
function hmacSql(key: Buffer, valueSql: string): string {
  const block = Buffer.alloc(64);
  key.copy(block);
  const ipad = Buffer.from(block.map((b) => b ^ 0x36));
  const opad = Buffer.from(block.map((b) => b ^ 0x5c));
  return `pg_catalog.sha256(${hex(opad)} || pg_catalog.sha256(${hex(ipad)} || pg_catalog.convert_to(CAST(${valueSql} AS text), 'UTF8')))`;
}

/** `n` 32-byte hash blocks: the hash, then the hash hashed with a counter. */
function blocks(hashSql: string, n: number): string[] {
  return Array.from({ length: n }, (_, i) => (i === 0 ? hashSql : `pg_catalog.sha256(${hashSql} || ${hex(Buffer.from([i]))})`));
}

interface Built {
  sql: string;
  /** 'native' keeps the column's type; 'text' turns it into text. */
  type: 'native' | 'text';
}

class MaskBuilder {
  readonly hashes: string[] = [];
  constructor(
    private readonly plan: TablePlan,
    private readonly keys: MaskingKeys,
    private readonly who: Principal,
  ) {}

  single(t: SingleFieldTransformationConfig, column: Column): Built {
    const value = `${ROW}.${identifier(column.name)}`;
    if ('retain' in t) return { sql: value, type: 'native' };
    if ('redactWithNull' in t) return { sql: `CAST(NULL AS ${column.type})`, type: 'native' };
    if ('constant' in t) return { sql: `CASE WHEN ${value} IS NULL THEN NULL ELSE ${literal(String(t.constant.value))} END`, type: 'text' };
    if ('generalizeDate' in t) {
      return { sql: `CAST(pg_catalog.date_trunc(${literal(t.generalizeDate.granularity)}, ${value}) AS ${column.type})`, type: 'native' };
    }
    if ('truncate' in t) {
      const { length, preserveSelectedCharacters, truncateFromStart } = t.truncate;
      const fn = preserveSelectedCharacters === truncateFromStart ? 'left' : 'right';
      const n = preserveSelectedCharacters ? length : -length;
      return { sql: `pg_catalog.${fn}(CAST(${value} AS text), ${n})`, type: 'text' };
    }
    if ('regex' in t || 'numericRegex' in t) {
      const p = 'regex' in t ? t.regex : t.numericRegex;
      const atoms = compileTokenPattern(p.regex);
      const need = tokenBlocks(atoms);
      let hash: string[];
      if (p.consistent) {
        // Computed once per row in the inner query, then read as many times as the token has characters.
        const name = `"__custos_h${this.hashes.length}"`;
        const group = p.consistencyGroupId ?? `${this.plan.key}.${column.name}`;
        this.hashes.push(`${hmacSql(groupKey(this.keys, group), value)} AS ${name}`);
        hash = blocks(`${HASH}.${name}`, need);
      } else {
        hash = blocks(`pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.random()::text || pg_catalog.clock_timestamp()::text, 'UTF8'))`, need);
      }
      let token = tokenSql(atoms, hash);
      if (p.watermarkingRegex) token = `(${token} || ${literal(this.watermark(p.watermarkingRegex))})`;
      const sql = `CASE WHEN ${value} IS NULL THEN NULL ELSE ${token} END`;
      if ('numericRegex' in t && NUMERIC_TYPES.test(column.type)) return { sql: `CAST(${sql} AS ${column.type})`, type: 'native' };
      return { sql, type: 'text' };
    }
    throw new Error('drop has no expression');
  }

  /** A mark that names the user and project an extract was taken by, shaped by the watermarking pattern. */
  private watermark(pattern: string): string {
    const atoms = compileTokenPattern(pattern);
    const mac = groupKey(this.keys, `custos-watermark:${this.who.id}:${this.who.project}`);
    return tokenFromBlocks(atoms, Array.from({ length: tokenBlocks(atoms) }, (_, i) => createHmac('sha256', mac).update(String(i)).digest()));
  }

  field(t: TransformationConfig, column: Column): string | undefined {
    if ('drop' in t) return undefined;
    if (!('ifAndElseIfs' in t)) return this.single(t, column).sql;
    const branches = t.ifAndElseIfs.map((b) => ({ when: b.expression, then: this.single(b.transformation, column) }));
    const otherwise = this.single(t.else, column);
    const mixed = [...branches.map((b) => b.then), otherwise].some((b) => b.type === 'text');
    const cast = (b: Built): string => (mixed && b.type === 'native' ? `CAST(${b.sql} AS text)` : b.sql);
    return `CASE ${branches.map((b) => `WHEN (${b.when}) THEN ${cast(b.then)}`).join(' ')} ELSE ${cast(otherwise)} END`;
  }
}

/** The masked relation's SELECT for one table, one user; `columns` come from the catalog, in table order. */
export function maskedRelationSql(plan: TablePlan, columns: Column[], keys: MaskingKeys, who: Principal): string {
  const builder = new MaskBuilder(plan, keys, who);
  const outputs: string[] = [];
  for (const column of columns) {
    const rule = plan.fields.get(column.name);
    const sql = rule ? builder.field(rule.transformation, column) : `${ROW}.${identifier(column.name)}`;
    if (sql !== undefined) outputs.push(`${sql} AS ${identifier(column.name)}`);
  }
  const where = plan.denyAll ? 'false' : plan.filters.map((f) => `(${f.expression})`).join(' AND ');
  const table = `${identifier(plan.schema)}.${identifier(plan.table)} AS ${ROW}`;
  const rows = where ? `(SELECT * FROM ${table} WHERE ${where} OFFSET 0) AS ${ROW}` : table;
  const hashes = builder.hashes.length > 0 ? `, LATERAL (SELECT ${builder.hashes.join(', ')} OFFSET 0) AS ${HASH}` : '';
  if (outputs.length === 0) outputs.push('NULL::text AS "__custos_no_visible_fields"');
  return `SELECT ${outputs.join(', ')} FROM ${rows}${hashes}`;
}
