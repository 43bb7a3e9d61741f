/** The closed set of reasons a filter is refused; callers and tests match on `code`. */
export type QueryErrorCode =
  | 'TOO_LONG'
  | 'TOO_DEEP'
  | 'UNEXPECTED_CHARACTER'
  | 'UNTERMINATED_STRING'
  | 'BAD_ESCAPE'
  | 'UNEXPECTED_TOKEN'
  | 'UNBALANCED_PARENTHESES'
  | 'FIELD_ON_RIGHT'
  | 'ARRAY_INDEX'
  | 'UNKNOWN_FIELD'
  | 'UNKNOWN_FUNCTION'
  | 'BAD_ARGUMENT'
  | 'BAD_REGEX'
  | 'BAD_TIMESTAMP'
  | 'BAD_VALUE'
  | 'BAD_PAGE_TOKEN';

/** A filter (or page token) that cannot be used, with the 1-based line and column where the problem starts. */
export class QueryError extends Error {
  override readonly name = 'QueryError';
  constructor(
    readonly code: QueryErrorCode,
    message: string,
    readonly line = 1,
    readonly column = 1,
  ) {
    super(`${message} (line ${line}, column ${column})`);
  }
}

/** A position in the filter text: offset into the string plus the line and column it names. */
export interface Position {
  offset: number;
  line: number;
  column: number;
}

export function errorAt(code: QueryErrorCode, message: string, at: Position): QueryError {
  return new QueryError(code, message, at.line, at.column);
}
