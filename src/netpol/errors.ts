/** The closed set of things that can go wrong in `custos netpol`, so callers and tests match on `code`. */
export type NetpolErrorCode =
  | 'MANIFEST_PARSE'
  | 'INVALID_OBJECT'
  | 'INVALID_POLICY'
  | 'INVALID_LOGGING'
  | 'INVALID_CONFIG'
  | 'FLOW_PARSE'
  | 'BAD_ENDPOINT';

export class NetpolError extends Error {
  constructor(
    readonly code: NetpolErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'NetpolError';
  }
}
