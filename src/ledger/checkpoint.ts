import { LedgerError } from './errors.ts';
import { HASH_SIZE } from './merkle.ts';
import { openNote, signNote, type NoteSigner, type NoteVerifier } from './note.ts';

/** C2SP tlog-checkpoint: a signed note whose text is origin, decimal tree size and base64 root hash. */
export interface Checkpoint {
  origin: string;
  treeSize: number;
  rootHash: Buffer;
}

export function formatCheckpoint(checkpoint: Checkpoint): string {
  return `${checkpoint.origin}\n${checkpoint.treeSize}\n${checkpoint.rootHash.toString('base64')}\n`;
}

export function signCheckpoint(checkpoint: Checkpoint, signer: NoteSigner): string {
  return signNote(formatCheckpoint(checkpoint), signer);
}

export function parseCheckpointText(text: string): Checkpoint {
  const lines = text.split('\n');
  const [origin, size, root] = lines;
  if (lines.length < 4 || origin === undefined || origin === '' || size === undefined || root === undefined) {
    throw new LedgerError('BAD_CHECKPOINT', 'checkpoint needs origin, tree size and root hash lines');
  }
  if (!/^(0|[1-9][0-9]{0,15})$/.test(size) || !Number.isSafeInteger(Number(size))) throw new LedgerError('BAD_CHECKPOINT', `checkpoint tree size ${JSON.stringify(size)} is not a decimal without leading zeroes`);
  const rootHash = Buffer.from(root, 'base64');
  if (rootHash.length !== HASH_SIZE || rootHash.toString('base64') !== root) throw new LedgerError('BAD_CHECKPOINT', `checkpoint root ${JSON.stringify(root)} is not a base64 SHA-256 hash`);
  return { origin, treeSize: Number(size), rootHash };
}

/** Checks the signature, then the origin, and returns the checkpoint the note commits to. */
export function openCheckpoint(note: string, verifier: NoteVerifier, expectedOrigin?: string): Checkpoint {
  const checkpoint = parseCheckpointText(openNote(note, verifier));
  if (expectedOrigin !== undefined && checkpoint.origin !== expectedOrigin) {
    throw new LedgerError('BAD_CHECKPOINT', `checkpoint origin ${JSON.stringify(checkpoint.origin)} is not ${JSON.stringify(expectedOrigin)}`);
  }
  return checkpoint;
}
