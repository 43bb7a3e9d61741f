import { generateKeyPairSync } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LedgerError } from './errors.ts';
import { writeFileDurably } from './fsutil.ts';
import { assertKeyName, noteSigner, parseVerifierKey, verifierKeyString, type NoteSigner, type NoteVerifier } from './note.ts';

export const SIGNING_KEY_FILE = 'signing-key.pem';
export const VERIFIER_KEY_FILE = 'verifier.key';
export const LEDGER_META_FILE = 'ledger.json';

/** What a data dir records about itself so that `custos verify` needs nothing but the directory. */
export interface LedgerMeta {
  version: 1;
  /** Checkpoint origins are `${originPrefix}${org}`. */
  originPrefix: string;
  /** The signed-note key name; fixed at creation because the key ID commits to it. */
  keyName: string;
}

export async function readLedgerMeta(dir: string): Promise<LedgerMeta | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, LEDGER_META_FILE), 'utf8')) as LedgerMeta;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Loads the data dir's Ed25519 key, creating it (mode 0600) and the metadata on first start. */
export async function loadOrCreateSigner(dir: string, originPrefix: string): Promise<{ signer: NoteSigner; meta: LedgerMeta }> {
  let meta = await readLedgerMeta(dir);
  let pem: string;
  try {
    pem = await readFile(join(dir, SIGNING_KEY_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    if (meta) throw new LedgerError('MISSING_FILE', `${join(dir, SIGNING_KEY_FILE)} is missing but the data dir was already initialized`);
    const keyName = originPrefix.replace(/\/+$/, '') || 'custos';
    assertKeyName(keyName);
    meta = { version: 1, originPrefix, keyName };
    pem = generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    await writeFileDurably(join(dir, SIGNING_KEY_FILE), pem, 0o600);
    const signer = noteSigner(keyName, pem);
    await writeFileDurably(join(dir, VERIFIER_KEY_FILE), `${verifierKeyString(signer)}\n`);
    await writeFileDurably(join(dir, LEDGER_META_FILE), `${JSON.stringify(meta, null, 2)}\n`);
    return { signer, meta };
  }
  if (!meta) throw new LedgerError('MISSING_FILE', `${join(dir, LEDGER_META_FILE)} is missing`);
  return { signer: noteSigner(meta.keyName, pem), meta };
}

/** A verifier from a verifier key string, a file holding one, or (by default) the data dir's own public key. */
export async function loadVerifier(keyOrFile: string): Promise<NoteVerifier> {
  if (/^[^\s+]+\+[0-9a-f]{8}\+/.test(keyOrFile.trim())) return parseVerifierKey(keyOrFile);
  try {
    return parseVerifierKey(await readFile(keyOrFile, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new LedgerError('MISSING_FILE', `verifier key ${keyOrFile} not found`);
    throw err;
  }
}
