import { createPrivateKey, createPublicKey, hash, sign, verify, type KeyObject } from 'node:crypto';
import { LedgerError } from './errors.ts';

/**
 * C2SP signed-note with Ed25519 (signature type 0x01): text ending in a newline, a blank line, then lines
 * `— <key name> base64(key ID ‖ signature)`; key ID = SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4].
 */
const ED25519_TYPE = 0x01;
const EM_DASH = '\u2014';
const KEY_NAME = /^[^\s+]+$/u;
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

export interface NoteVerifier {
  name: string;
  keyId: Buffer;
  publicKey: Buffer;
}

export interface NoteSigner extends NoteVerifier {
  sign(text: string): Buffer;
}

export function noteKeyId(name: string, publicKey: Uint8Array): Buffer {
  return hash('sha256', Buffer.concat([Buffer.from(`${name}\n`, 'utf8'), Buffer.of(ED25519_TYPE), publicKey]), 'buffer').subarray(0, 4);
}

export function assertKeyName(name: string): void {
  if (!KEY_NAME.test(name)) throw new LedgerError('BAD_CHECKPOINT', `key name ${JSON.stringify(name)} must be non-empty without spaces or '+'`);
}

/** The verifier key string `<name>+<hex key ID>+<base64(0x01 ‖ public key)>` used by Go's note package and witnesses. */
export function verifierKeyString(verifier: NoteVerifier): string {
  return `${verifier.name}+${verifier.keyId.toString('hex')}+${Buffer.concat([Buffer.of(ED25519_TYPE), verifier.publicKey]).toString('base64')}`;
}

export function parseVerifierKey(text: string): NoteVerifier {
  const match = /^([^\s+]+)\+([0-9a-f]{8})\+([A-Za-z0-9+/]+=*)$/.exec(text.trim());
  if (!match) throw new LedgerError('BAD_CHECKPOINT', 'verifier key must look like <name>+<8 hex digits>+<base64 key>');
  const [, name, idHex, keyB64] = match as unknown as [string, string, string, string];
  const key = Buffer.from(keyB64, 'base64');
  if (key.length !== 33 || key[0] !== ED25519_TYPE) throw new LedgerError('BAD_CHECKPOINT', 'verifier key is not an Ed25519 (type 0x01) key');
  const publicKey = key.subarray(1);
  const keyId = noteKeyId(name, publicKey);
  if (keyId.toString('hex') !== idHex) throw new LedgerError('BAD_CHECKPOINT', `verifier key ID ${idHex} does not match its name and key (${keyId.toString('hex')})`);
  return { name, keyId, publicKey };
}

export function publicKeyBytes(key: KeyObject): Buffer {
  const spki = key.export({ format: 'der', type: 'spki' });
  return spki.subarray(spki.length - 32);
}

export function noteSigner(name: string, privateKeyPem: string): NoteSigner {
  assertKeyName(name);
  const privateKey = createPrivateKey(privateKeyPem);
  const publicKey = publicKeyBytes(createPublicKey(privateKey));
  return {
    name,
    publicKey,
    keyId: noteKeyId(name, publicKey),
    sign: (text) => sign(null, Buffer.from(text, 'utf8'), privateKey),
  };
}

export function signNote(text: string, signer: NoteSigner): string {
  if (!text.endsWith('\n')) throw new LedgerError('BAD_CHECKPOINT', 'note text must end with a newline');
  const signature = Buffer.concat([signer.keyId, signer.sign(text)]).toString('base64');
  return `${text}\n${EM_DASH} ${signer.name} ${signature}\n`;
}

/**
 * The text of a note after checking its signature by `verifier`. Signatures by other keys are ignored, as the spec
 * requires; a note with no valid signature by the verifier is refused.
 */
export function openNote(note: string, verifier: NoteVerifier): string {
  const split = note.lastIndexOf('\n\n');
  if (split < 0 || !note.endsWith('\n')) throw new LedgerError('BAD_CHECKPOINT', 'signed note has no blank line before its signatures');
  const text = note.slice(0, split + 1);
  const publicKey = createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, verifier.publicKey]), format: 'der', type: 'spki' });
  let verified = false;
  for (const line of note.slice(split + 2, -1).split('\n')) {
    const match = /^\u2014 (\S+) ([A-Za-z0-9+/=]+)$/u.exec(line);
    if (!match) throw new LedgerError('BAD_CHECKPOINT', `malformed signature line ${JSON.stringify(line.slice(0, 80))}`);
    const bytes = Buffer.from(match[2] as string, 'base64');
    if (match[1] !== verifier.name || bytes.length < 4 || !bytes.subarray(0, 4).equals(verifier.keyId)) continue;
    if (!verify(null, Buffer.from(text, 'utf8'), publicKey, bytes.subarray(4))) {
      throw new LedgerError('BAD_SIGNATURE', `signature by ${verifier.name} does not verify`);
    }
    verified = true;
  }
  if (!verified) throw new LedgerError('BAD_SIGNATURE', `note carries no signature by ${verifier.name}+${verifier.keyId.toString('hex')}`);
  return text;
}
