/**
 * SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it: the verifier format of `pg_authid.rolpassword`,
 * the server side for clients of the proxy, and the client side for an upstream that asks for a password.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { DataProxyError } from './errors.ts';

export const SCRAM_MECHANISM = 'SCRAM-SHA-256';
const DEFAULT_ITERATIONS = 4096;

export interface ScramVerifier {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

const hmac = (key: Buffer, data: string | Buffer): Buffer => createHmac('sha256', key).update(data).digest();
const sha256 = (data: Buffer): Buffer => createHash('sha256').update(data).digest();
const xor = (a: Buffer, b: Buffer): Buffer => Buffer.from(a.map((v, i) => v ^ b[i]!));

/** Turns a plain password into a verifier; the password itself is not kept. (SASLprep is the identity for ASCII.) */
export function createVerifier(password: string, iterations = DEFAULT_ITERATIONS, salt = randomBytes(16)): ScramVerifier {
  const salted = pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256');
  return { iterations, salt, storedKey: sha256(hmac(salted, 'Client Key')), serverKey: hmac(salted, 'Server Key') };
}

/** `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 parts, as PostgreSQL stores it. */
export function formatVerifier(v: ScramVerifier): string {
  return `${SCRAM_MECHANISM}$${v.iterations}:${v.salt.toString('base64')}$${v.storedKey.toString('base64')}:${v.serverKey.toString('base64')}`;
}

export function parseVerifier(text: string): ScramVerifier {
  const m = /^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$/.exec(text);
  if (!m) throw new DataProxyError('CONFIG', 'scramVerifier is not "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"');
  const v = { iterations: Number(m[1]), salt: Buffer.from(m[2]!, 'base64'), storedKey: Buffer.from(m[3]!, 'base64'), serverKey: Buffer.from(m[4]!, 'base64') };
  if (v.storedKey.length !== 32 || v.serverKey.length !== 32 || v.iterations < 1) {
    throw new DataProxyError('CONFIG', 'scramVerifier keys must be 32 bytes and iterations positive');
  }
  return v;
}

function attributes(message: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of message.split(',')) {
    const eq = part.indexOf('=');
    if (eq === 1) out.set(part[0]!, part.slice(2));
  }
  return out;
}

/**
 * One server-side exchange. For an unknown user the exchange runs against a random verifier and fails at the
 * proof, so a client cannot tell unknown users from wrong passwords.
 */
export class ScramServerExchange {
  private clientFirstBare = '';
  private serverFirst = '';
  private nonce = '';
  private gs2Header = '';

  constructor(
    private readonly verifier: ScramVerifier,
    private readonly serverNonce = randomBytes(18).toString('base64'),
  ) {}

  /** client-first-message → server-first-message. */
  start(clientFirst: string): string {
    const m = /^([ny]|p=[^,]*),([^,]*),(.*)$/.exec(clientFirst);
    if (!m || m[1]!.startsWith('p')) throw new DataProxyError('AUTH', 'malformed SCRAM client-first-message (channel binding is not offered)');
    this.gs2Header = `${m[1]},${m[2]},`;
    this.clientFirstBare = m[3]!;
    const clientNonce = attributes(this.clientFirstBare).get('r');
    if (!clientNonce) throw new DataProxyError('AUTH', 'SCRAM client-first-message has no nonce');
    this.nonce = clientNonce + this.serverNonce;
    this.serverFirst = `r=${this.nonce},s=${this.verifier.salt.toString('base64')},i=${this.verifier.iterations}`;
    return this.serverFirst;
  }

  /** client-final-message → server-final-message, or an AUTH error when the proof is wrong. */
  finish(clientFinal: string): string {
    const proofAt = clientFinal.lastIndexOf(',p=');
    if (proofAt < 0) throw new DataProxyError('AUTH', 'SCRAM client-final-message has no proof');
    const withoutProof = clientFinal.slice(0, proofAt);
    const attrs = attributes(withoutProof);
    if (attrs.get('r') !== this.nonce) throw new DataProxyError('AUTH', 'SCRAM nonce mismatch');
    if (attrs.get('c') !== Buffer.from(this.gs2Header).toString('base64')) throw new DataProxyError('AUTH', 'SCRAM channel binding mismatch');
    const proof = Buffer.from(clientFinal.slice(proofAt + 3), 'base64');
    const authMessage = `${this.clientFirstBare},${this.serverFirst},${withoutProof}`;
    const clientSignature = hmac(this.verifier.storedKey, authMessage);
    if (proof.length !== 32) throw new DataProxyError('AUTH', 'password authentication failed');
    const storedKey = sha256(xor(proof, clientSignature));
    if (!timingSafeEqual(storedKey, this.verifier.storedKey)) throw new DataProxyError('AUTH', 'password authentication failed');
    return `v=${hmac(this.verifier.serverKey, authMessage).toString('base64')}`;
  }
}

/** The client side, for an upstream PostgreSQL that asks the proxy for SCRAM-SHA-256. */
export class ScramClientExchange {
  private clientFirstBare = '';
  private expectedServerSignature = '';
  constructor(
    private readonly password: string,
    private readonly clientNonce = randomBytes(18).toString('base64'),
  ) {}

  first(user = ''): string {
    this.clientFirstBare = `n=${user},r=${this.clientNonce}`;
    return `n,,${this.clientFirstBare}`;
  }

  final(serverFirst: string): string {
    const attrs = attributes(serverFirst);
    const nonce = attrs.get('r') ?? '';
    if (!nonce.startsWith(this.clientNonce)) throw new DataProxyError('UPSTREAM', 'upstream SCRAM nonce mismatch');
    const salted = pbkdf2Sync(this.password.normalize('NFKC'), Buffer.from(attrs.get('s') ?? '', 'base64'), Number(attrs.get('i')), 32, 'sha256');
    const clientKey = hmac(salted, 'Client Key');
    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`;
    const proof = xor(clientKey, hmac(sha256(clientKey), authMessage));
    this.expectedServerSignature = hmac(hmac(salted, 'Server Key'), authMessage).toString('base64');
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  verify(serverFinal: string): void {
    if (attributes(serverFinal).get('v') !== this.expectedServerSignature) throw new DataProxyError('UPSTREAM', 'upstream SCRAM server signature mismatch');
  }
}
