/** The real PostgreSQL parser (libpg-query, the server's own grammar) and its deparser, loaded once. */
import { loadModule, parseSync } from 'libpg-query';
import { deparseSync } from 'pgsql-deparser';
import { DataProxyError } from './errors.ts';

await loadModule();

/** A parse-tree node: `{ NodeType: { …fields } }`, as libpg-query emits it. */
export type Node = Record<string, unknown>;
export interface RawStatement {
  stmt: Node;
  stmt_location?: number;
  stmt_len?: number;
}

export function parseStatements(sql: string): RawStatement[] {
  try {
    return (parseSync(sql) as unknown as { stmts?: RawStatement[] }).stmts ?? [];
  } catch (err) {
    throw new DataProxyError('SYNTAX', (err as Error).message);
  }
}

export function deparseStatements(stmts: Node[]): string {
  return stmts.map((stmt) => deparseSync({ version: 180004, stmts: [{ stmt }] } as never, { pretty: false } as never)).join('; ');
}

/** One SQL boolean expression from the configuration (a filter or a cell-level condition), as a parse-tree node. */
export function parseExpression(expression: string): Node {
  const stmts = parseStatements(`SELECT 1 WHERE ${expression}`);
  const select = stmts[0]?.stmt['SelectStmt'] as Node | undefined;
  if (stmts.length !== 1 || !select || !select['whereClause'] || Object.keys(select).some((k) => !['targetList', 'whereClause', 'limitOption', 'op'].includes(k))) {
    throw new DataProxyError('CONFIG', `"${expression}" is not a single SQL expression`);
  }
  return select['whereClause'] as Node;
}

/** A SQL string literal (standard_conforming_strings, which the proxy forces on upstream). */
export function literal(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

export function identifier(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
