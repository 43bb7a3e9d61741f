// The ledger's public face: the tamper-evident, append-only store that everything else writes into.
export { Ledger, type LedgerOptions, type InclusionProof, type ConsistencyProof } from './ledger.ts';
export { LedgerError, type LedgerErrorCode } from './errors.ts';
export { canonicalJson } from './canonical.ts';
export { leafHash, nodeHash, verifyInclusion, verifyConsistency, rootFromInclusionProof, EMPTY_ROOT, MerkleTree } from './merkle.ts';
export { openCheckpoint, parseCheckpointText, type Checkpoint } from './checkpoint.ts';
export { parseVerifierKey, openNote, type NoteVerifier } from './note.ts';
export { verifyDataDir, verifyArchive, type VerifyReport, type VerifyFailure, type VerifyOptions, type OrganizationReport } from './verify.ts';
export { DirectoryArchiveTarget, type ArchiveTarget, type SegmentManifest } from './archive.ts';
export { S3ArchiveTarget, S3RequestError, parseS3Url, s3CredentialsFromEnv, type S3ArchiveOptions, type S3Credentials } from './s3-archive.ts';
