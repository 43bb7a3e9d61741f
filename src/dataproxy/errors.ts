/** The one error class of the data proxy; `code` is a closed set so callers and tests match on it. */
export type DataProxyErrorCode =
  | 'CONFIG' // the configuration file is invalid (message names the path)
  | 'PROTOCOL' // a client or upstream broke the wire protocol
  | 'AUTH' // authentication failed
  | 'POLICY_RETRIEVAL' // policies could not be fetched from the policy source
  | 'REFUSED' // a statement cannot be rewritten safely (SQLSTATE 42501)
  | 'SYNTAX' // the statement does not parse (SQLSTATE 42601)
  | 'UPSTREAM'; // the upstream database is unreachable or failed

export class DataProxyError extends Error {
  constructor(
    readonly code: DataProxyErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'DataProxyError';
  }
}

/** A refusal: the statement would let a protected value or filtered row escape, so it never runs. */
export function refuse(message: string): DataProxyError {
  return new DataProxyError('REFUSED', message);
}
