import { createHmac, hash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { assertArchiveKey, type ArchiveTarget } from './archive.ts';

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface S3ArchiveOptions {
  bucket: string;
  region: string;
  /** Default `https://s3.<region>.amazonaws.com`. */
  endpoint?: string;
  /** Prepended, with a `/`, to every archive key. */
  prefix?: string;
  /** `path` (`endpoint/bucket/key`) works with S3-compatible servers; `virtual` (`bucket.endpoint/key`) is AWS's preferred form. */
  addressing?: 'path' | 'virtual';
  /** Default: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` from the environment. */
  credentials?: S3Credentials;
  /** Bounds one attempt, sending the body and reading the response included. */
  requestTimeoutMs?: number;
  /** Attempts per request; only network failures, timeouts and 5xx answers are tried again. */
  maxAttempts?: number;
  /** ListObjectsV2 `max-keys`; S3 returns at most 1000 whatever is asked. */
  listPageSize?: number;
  /** Largest object `get` reads before giving up. */
  maxObjectBytes?: number;
}

/** A 64 MiB segment (the ledger's default `segmentMaxBytes`) gzips to less, but incompressible payloads come close to it. */
const DEFAULT_MAX_OBJECT_BYTES = 128 * 1024 * 1024;
/** A page of 1000 keys of up to 1024 bytes each, XML-escaped, with the rest of the listing. */
const MAX_LIST_RESPONSE_BYTES = 16 * 1024 * 1024;
const MAX_ERROR_RESPONSE_BYTES = 64 * 1024;
/** Long enough to send a 64 MiB segment at about 10 Mbit/s. */
const DEFAULT_REQUEST_TIMEOUT_MS = 120_000;
const DEFAULT_MAX_ATTEMPTS = 3;
const RETRY_BASE_DELAY_MS = 200;
const EMPTY_SHA256 = hash('sha256', '', 'hex');

/** Reads the credentials from the environment, so that none is ever written in a config file. */
export function s3CredentialsFromEnv(env: NodeJS.ProcessEnv = process.env): S3Credentials {
  const accessKeyId = env['AWS_ACCESS_KEY_ID'];
  const secretAccessKey = env['AWS_SECRET_ACCESS_KEY'];
  if (!accessKeyId || !secretAccessKey) {
    throw new Error('the S3 archive needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (credentials are never read from a config file)');
  }
  const sessionToken = env['AWS_SESSION_TOKEN'];
  return { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) };
}

/** `s3://bucket[/prefix]` as the CLI takes it; undefined for anything else (a directory path). */
export function parseS3Url(text: string): { bucket: string; prefix?: string } | undefined {
  const match = /^s3:\/\/([^/]+)\/*(.*?)\/*$/.exec(text);
  if (!match) return undefined;
  return { bucket: match[1] as string, ...(match[2] ? { prefix: match[2] } : {}) };
}

/** RFC 3986 unreserved characters stay, everything else is percent-encoded byte by byte, as SigV4 requires. */
function uriEncode(text: string): string {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${(c.codePointAt(0) as number).toString(16).toUpperCase()}`);
}

/** Each `/`-separated segment of an object key encoded on its own, the `/` kept. */
export function encodeS3Path(key: string): string {
  return key.split('/').map(uriEncode).join('/');
}

export interface SignableRequest {
  method: string;
  host: string;
  /** The path exactly as sent, already encoded (`encodeS3Path`). */
  path: string;
  query: [string, string][];
  /** Headers to sign besides host and the x-amz ones added here. */
  headers?: Record<string, string>;
  payloadSha256: string;
  credentials: S3Credentials;
  region: string;
  now: Date;
}

/** The query string in SigV4's canonical form, which is also what is sent so the two cannot differ. */
export function canonicalQuery(query: [string, string][]): string {
  const order = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
  return query
    .map(([name, value]): [string, string] => [uriEncode(name), uriEncode(value)])
    .sort(([nameA, valueA], [nameB, valueB]) => order(nameA, nameB) || order(valueA, valueB))
    .map(([name, value]) => `${name}=${value}`)
    .join('&');
}

/** AWS Signature Version 4 for S3 (service `s3`, signed payload): the headers to send, Authorization included. */
export function signS3Request(request: SignableRequest): Record<string, string> {
  const amzDate = request.now.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
  const day = amzDate.slice(0, 8);
  const headers: Record<string, string> = {
    host: request.host,
    'x-amz-content-sha256': request.payloadSha256,
    'x-amz-date': amzDate,
    ...(request.credentials.sessionToken ? { 'x-amz-security-token': request.credentials.sessionToken } : {}),
  };
  for (const [name, value] of Object.entries(request.headers ?? {})) headers[name.toLowerCase()] = value;
  const names = Object.keys(headers).sort();
  const signedHeaders = names.join(';');
  const canonicalRequest = [
    request.method,
    request.path,
    canonicalQuery(request.query),
    ...names.map((name) => `${name}:${(headers[name] as string).trim().replace(/ +/g, ' ')}`),
    '',
    signedHeaders,
    request.payloadSha256,
  ].join('\n');
  const scope = `${day}/${request.region}/s3/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, hash('sha256', canonicalRequest, 'hex')].join('\n');
  let key: Buffer = Buffer.from(`AWS4${request.credentials.secretAccessKey}`);
  for (const part of [day, request.region, 's3', 'aws4_request']) key = createHmac('sha256', key).update(part).digest();
  const signature = createHmac('sha256', key).update(stringToSign).digest('hex');
  headers['authorization'] = `AWS4-HMAC-SHA256 Credential=${request.credentials.accessKeyId}/${scope},SignedHeaders=${signedHeaders},Signature=${signature}`;
  // fetch sets Host itself from the URL, which is the value signed above
  delete headers['host'];
  return headers;
}

const XML_ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

/** Decodes the predefined and numeric character references; anything else is a malformed answer, not text to guess at. */
function decodeXmlText(text: string): string {
  return text.replace(/&(#x[0-9a-fA-F]{1,6}|#[0-9]{1,7}|[a-z]{2,4});|&/g, (whole, ref: string | undefined) => {
    const codePoint = ref?.startsWith('#x') ? parseInt(ref.slice(2), 16) : ref?.startsWith('#') ? parseInt(ref.slice(1), 10) : undefined;
    if (codePoint !== undefined && codePoint <= 0x10ffff) return String.fromCodePoint(codePoint);
    const named = ref === undefined ? undefined : XML_ENTITIES[ref];
    if (named === undefined) throw new Error(`unexpected character reference ${JSON.stringify(whole)} in an S3 answer`);
    return named;
  });
}

/** The text of every `<tag>` holding only text; S3's answers are flat enough that no general XML parser is needed. */
function xmlValues(xml: string, tag: string): string[] {
  return [...xml.matchAll(new RegExp(`<${tag}>([^<]*)</${tag}>`, 'g'))].map((m) => decodeXmlText(m[1] as string));
}

interface ListPage {
  keys: string[];
  nextToken: string | undefined;
}

function parseListPage(xml: string): ListPage {
  const truncated = xmlValues(xml, 'IsTruncated')[0] === 'true';
  const nextToken = xmlValues(xml, 'NextContinuationToken')[0];
  if (truncated && !nextToken) throw new Error('S3 listing is truncated but names no continuation token');
  return { keys: xmlValues(xml, 'Key'), nextToken: truncated ? nextToken : undefined };
}

/** An S3 request that failed: the operation, key, HTTP status and S3's error code and message; never a credential. */
export class S3RequestError extends Error {
  override readonly name = 'S3RequestError';

  constructor(
    message: string,
    readonly operation: string,
    readonly key: string | undefined,
    readonly status?: number,
    readonly code?: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

interface S3Call {
  operation: 'PutObject' | 'GetObject' | 'ListObjectsV2';
  method: 'GET' | 'PUT';
  key?: string;
  query?: [string, string][];
  body?: Uint8Array;
}

/** A bucket (or a prefix in one) of S3 or an S3-compatible store, spoken to with `fetch` and SigV4. */
export class S3ArchiveTarget implements ArchiveTarget {
  private readonly endpoint: URL;
  private readonly bucket: string;
  private readonly region: string;
  private readonly prefix: string;
  private readonly addressing: 'path' | 'virtual';
  private readonly credentials: S3Credentials;
  private readonly requestTimeoutMs: number;
  private readonly maxAttempts: number;
  private readonly listPageSize: number;
  private readonly maxObjectBytes: number;

  constructor(options: S3ArchiveOptions) {
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(options.bucket)) throw new Error(`invalid S3 bucket name ${JSON.stringify(options.bucket)}`);
    this.bucket = options.bucket;
    this.region = options.region;
    this.endpoint = new URL(options.endpoint ?? `https://s3.${options.region}.amazonaws.com`);
    if (this.endpoint.protocol !== 'https:' && this.endpoint.protocol !== 'http:') throw new Error(`S3 endpoint ${this.endpoint.origin} is not http(s)`);
    this.prefix = (options.prefix ?? '').replace(/^\/+|\/+$/g, '');
    if (this.prefix !== '') assertArchiveKey(this.prefix);
    this.addressing = options.addressing ?? 'path';
    this.credentials = options.credentials ?? s3CredentialsFromEnv();
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.maxAttempts = Math.max(1, options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS);
    this.listPageSize = options.listPageSize ?? 1000;
    this.maxObjectBytes = options.maxObjectBytes ?? DEFAULT_MAX_OBJECT_BYTES;
  }

  describe(): string {
    return `s3://${this.bucket}${this.prefix ? `/${this.prefix}` : ''} at ${this.endpoint.origin}`;
  }

  async put(key: string, body: Uint8Array): Promise<void> {
    assertArchiveKey(key);
    await this.call({ operation: 'PutObject', method: 'PUT', key, body }, MAX_ERROR_RESPONSE_BYTES);
  }

  async get(key: string): Promise<Buffer | undefined> {
    assertArchiveKey(key);
    return this.call({ operation: 'GetObject', method: 'GET', key }, this.maxObjectBytes);
  }

  /** Keys directly under `prefix`, every page of them (a `/`-delimited listing, so deeper keys are not read). */
  async list(prefix: string): Promise<string[]> {
    const fullPrefix = this.listedPrefix(prefix);
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.listPage([['delimiter', '/'], ['prefix', fullPrefix], ...(token === undefined ? [] : [['continuation-token', token] as [string, string]])]);
      keys.push(...page.keys.filter((key) => key.startsWith(fullPrefix)).map((key) => this.relative(key)));
      token = page.nextToken;
    } while (token !== undefined);
    return keys.sort();
  }

  /**
   * Found by skipping, not with a delimiter: after the first key under `p/`, the next request starts after `p0`
   * (`0` follows `/`), so each prefix costs one request however many keys it holds. s3rver 3.7.1 leaves out the
   * common prefix of a folder whose keys all lie deeper, as every organization's do (`org/segments/…`).
   */
  async listPrefixes(prefix: string): Promise<string[]> {
    const fullPrefix = this.listedPrefix(prefix);
    const prefixes: string[] = [];
    let startAfter: string | undefined;
    let current: string | undefined;
    for (;;) {
      const page = await this.listPage([['prefix', fullPrefix], ...(startAfter === undefined ? [] : [['start-after', startAfter] as [string, string]])]);
      for (const key of page.keys) {
        if (!key.startsWith(fullPrefix) || (current !== undefined && key.startsWith(current))) continue;
        const slash = key.indexOf('/', fullPrefix.length);
        if (slash === -1) {
          startAfter = key;
          continue;
        }
        current = key.slice(0, slash + 1);
        prefixes.push(this.relative(current));
        startAfter = `${key.slice(0, slash)}0`;
      }
      if (page.nextToken === undefined || page.keys.length === 0) return prefixes.sort();
    }
  }

  private fullKey(key: string): string {
    return this.prefix === '' ? key : `${this.prefix}/${key}`;
  }

  private relative(fullKey: string): string {
    return this.prefix === '' ? fullKey : fullKey.slice(this.prefix.length + 1);
  }

  private listedPrefix(prefix: string): string {
    if (prefix !== '') assertArchiveKey(prefix.replace(/\/$/, ''));
    return this.fullKey(prefix);
  }

  private async listPage(query: [string, string][]): Promise<ListPage> {
    const xml = await this.call({ operation: 'ListObjectsV2', method: 'GET', query: [['list-type', '2'], ['max-keys', String(this.listPageSize)], ...query] }, MAX_LIST_RESPONSE_BYTES);
    return parseListPage((xml as Buffer).toString('utf8'));
  }

  private urlOf(key: string | undefined): { url: URL; host: string; path: string } {
    const objectPath = key === undefined ? '' : encodeS3Path(this.fullKey(key));
    const base = this.endpoint.pathname.replace(/\/+$/, '');
    const host = this.addressing === 'virtual' ? `${this.bucket}.${this.endpoint.host}` : this.endpoint.host;
    const path = this.addressing === 'virtual' ? `${base}/${objectPath}` : `${base}/${this.bucket}${key === undefined ? '' : `/${objectPath}`}`;
    return { url: new URL(`${this.endpoint.protocol}//${host}${path}`), host, path };
  }

  /** One S3 request, tried again on network failures and 5xx; the body read is capped at `maxBytes`. GetObject's 404 is `undefined`. */
  private async call(request: S3Call, maxBytes: number): Promise<Buffer | undefined> {
    const { url, host, path } = this.urlOf(request.key);
    const query = canonicalQuery(request.query ?? []);
    if (query) url.search = query;
    const payloadSha256 = request.body ? hash('sha256', request.body, 'hex') : EMPTY_SHA256;
    const what = `S3 ${request.operation}${request.key === undefined ? '' : ` of ${request.key}`} in ${this.describe()}`;
    for (let attempt = 1; ; attempt++) {
      const last = attempt >= this.maxAttempts;
      let response: Response;
      try {
        const headers = signS3Request({ method: request.method, host, path, query: request.query ?? [], payloadSha256, credentials: this.credentials, region: this.region, now: new Date() });
        // A redirect (S3's answer to a wrong region) is reported with the endpoint it names, not followed with signed headers.
        response = await fetch(url, { method: request.method, headers, ...(request.body ? { body: request.body } : {}), signal: AbortSignal.timeout(this.requestTimeoutMs), redirect: 'manual' });
        if (response.ok) return await readCapped(response, maxBytes);
      } catch (err) {
        if (err instanceof AnswerTooLarge) throw new S3RequestError(`${what}: ${err.message}`, request.operation, request.key, 200, undefined);
        if (last) throw new S3RequestError(`${what} failed after ${attempt} attempt(s): ${networkReason(err, this.requestTimeoutMs)}`, request.operation, request.key, undefined, undefined, { cause: err });
        await backoff(attempt);
        continue;
      }
      const { code, message } = await readErrorBody(response);
      if (request.operation === 'GetObject' && response.status === 404 && (code === undefined || code === 'NoSuchKey')) return undefined;
      if (response.status < 500 || last) {
        const detail = `HTTP ${response.status}${code ? ` ${code}` : ''}${message ? `: ${message}` : ''}`;
        throw new S3RequestError(`${what} failed: ${detail}${response.status >= 500 ? ` (after ${attempt} attempts)` : ''}`, request.operation, request.key, response.status, code);
      }
      await backoff(attempt);
    }
  }
}

function backoff(attempt: number): Promise<void> {
  return sleep(RETRY_BASE_DELAY_MS * 4 ** (attempt - 1) * (0.5 + Math.random()));
}

function networkReason(err: unknown, timeoutMs: number): string {
  const error = err as Error & { cause?: { code?: string; message?: string } };
  if (error.name === 'TimeoutError') return `no complete answer within ${timeoutMs} ms`;
  return error.cause?.code ?? error.cause?.message ?? error.message;
}

class AnswerTooLarge extends Error {}

async function readCapped(response: Response, maxBytes: number): Promise<Buffer> {
  const declared = Number(response.headers.get('content-length') ?? 0);
  if (declared > maxBytes) {
    await response.body?.cancel();
    throw new AnswerTooLarge(`the answer is ${declared} bytes, more than the ${maxBytes} bytes read at most`);
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (response.body) {
    for await (const chunk of response.body) {
      total += chunk.byteLength;
      if (total > maxBytes) {
        await response.body.cancel();
        throw new AnswerTooLarge(`the answer is longer than the ${maxBytes} bytes read at most`);
      }
      chunks.push(chunk);
    }
  }
  return Buffer.concat(chunks, total);
}

async function readErrorBody(response: Response): Promise<{ code?: string; message?: string }> {
  let xml: string;
  try {
    xml = (await readCapped(response, MAX_ERROR_RESPONSE_BYTES)).toString('utf8');
  } catch {
    return {};
  }
  const code = xmlValues(xml, 'Code')[0];
  const message = xmlValues(xml, 'Message')[0];
  return { ...(code ? { code } : {}), ...(message ? { message } : {}) };
}
