/** The filter language: Cloud Logging / AIP-160 filters parsed once, run in memory or compiled to DuckDB SQL. */
export type { Comparator, Expr, FieldPath, Filter, Literal } from './ast.ts';
export { QueryError, type QueryErrorCode } from './errors.ts';
export { MAX_FILTER_LENGTH } from './lexer.ts';
export { parseFilter } from './parser.ts';
export { canonicalForm } from './canonical.ts';
export { compilePredicate, type EntryPredicate, ipInNet } from './predicate.ts';
export { compileSql, type CompiledSql, INDEX_COLUMNS, indexedColumns, type IndexedColumns, IP_IN_NET_FUNCTION } from './sql.ts';
