/** Every failure of the ledger layer carries one of these codes, so callers and tests match on `code`. */
export type LedgerErrorCode =
  | 'INVALID_ORG' // organization name outside ^[a-z0-9][a-z0-9._-]{0,62}$
  | 'INVALID_ENTRY' // an entry that has no canonical JSON form (NaN, lone surrogate, too deep)
  | 'INVALID_ARGUMENT' // a proof or read request outside the tree
  | 'IO_ERROR' // the disk refused a write or fsync; nothing of the batch was acknowledged
  | 'CLOSED' // the ledger was closed
  | 'BAD_RECORD' // a segment record whose length, checksum or header does not parse
  | 'SEQUENCE_GAP' // a record whose index is not the next one (deleted or reordered entries)
  | 'ROOT_MISMATCH' // recomputed Merkle root differs from a signed checkpoint or manifest
  | 'TRUNCATED_LOG' // fewer entries than a checkpoint that was seen commits to
  | 'BAD_SIGNATURE' // a checkpoint whose signature does not verify with the ledger key
  | 'BAD_CHECKPOINT' // a checkpoint that does not parse, or names another origin
  | 'CHAIN_BROKEN' // an archive manifest that does not chain to its predecessor
  | 'HASH_MISMATCH' // an archived object whose SHA-256 differs from its manifest
  | 'MISSING_FILE'; // a file that verification needs is absent

export class LedgerError extends Error {
  override readonly name = 'LedgerError';
  readonly code: LedgerErrorCode;
  readonly org?: string;
  readonly segment?: string;
  readonly entryIndex?: number;

  constructor(
    code: LedgerErrorCode,
    message: string,
    where: { org?: string; segment?: string; entryIndex?: number; cause?: unknown } = {},
  ) {
    super(message, where.cause === undefined ? undefined : { cause: where.cause });
    this.code = code;
    if (where.org !== undefined) this.org = where.org;
    if (where.segment !== undefined) this.segment = where.segment;
    if (where.entryIndex !== undefined) this.entryIndex = where.entryIndex;
  }
}

const ORGANIZATION_PATTERN = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** Organization names become directory names, so they are checked before any path is built from them. */
export function assertOrganization(org: string): void {
  if (typeof org !== 'string' || !ORGANIZATION_PATTERN.test(org) || org === '.' || org === '..') {
    throw new LedgerError('INVALID_ORG', `invalid organization name ${JSON.stringify(org)}: must match ${ORGANIZATION_PATTERN.source}`, { org });
  }
}
