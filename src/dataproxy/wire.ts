/**
 * PostgreSQL frontend/backend protocol 3.0 framing (https://www.postgresql.org/docs/current/protocol-message-formats.html):
 * a type byte and an Int32 length that counts itself, except the start-up packets, which have no type byte.
 * Only the messages the proxy reads or writes are decoded; everything else travels as opaque bytes.
 */
import { DataProxyError } from './errors.ts';

export const PROTOCOL_VERSION_3 = 196608;
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;
/** A message longer than this is refused: bounds what one client can make the proxy buffer. */
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

export interface Message {
  type: string;
  /** The whole message, type byte and length included, so it can be forwarded untouched. */
  raw: Buffer;
  /** The body after the length. */
  body: Buffer;
}

/** Splits a byte stream into messages; `startup` reads the untyped start-up packet first. */
export class MessageReader {
  private pending: Buffer = Buffer.alloc(0);
  constructor(public startup = false) {}

  push(chunk: Buffer): Message[] {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const out: Message[] = [];
    let offset = 0;
    for (;;) {
      const headerBytes = this.startup ? 4 : 5;
      if (this.pending.length - offset < headerBytes) break;
      const length = this.pending.readInt32BE(offset + headerBytes - 4);
      if (length < 4 || length > MAX_MESSAGE_BYTES) {
        throw new DataProxyError('PROTOCOL', `invalid message length ${length} at offset ${offset}`);
      }
      const total = length + headerBytes - 4;
      if (this.pending.length - offset < total) break;
      const raw = this.pending.subarray(offset, offset + total);
      out.push({ type: this.startup ? '' : String.fromCharCode(raw[0]!), raw, body: raw.subarray(headerBytes) });
      offset += total;
      if (this.startup) {
        // Only one start-up packet, unless it was an SSLRequest/GSSENCRequest (answered, then the real one follows).
        const code = raw.readInt32BE(4);
        if (code !== SSL_REQUEST_CODE && code !== GSSENC_REQUEST_CODE) this.startup = false;
      }
    }
    this.pending = offset === this.pending.length ? Buffer.alloc(0) : Buffer.from(this.pending.subarray(offset));
    return out;
  }

  /** Bytes received but not yet a whole message (handed over when a TLS layer takes the socket). */
  get buffered(): number {
    return this.pending.length;
  }

  /** Those bytes, which the reader then forgets (the native relay takes them with the socket). */
  take(): Buffer {
    const pending = this.pending;
    this.pending = Buffer.alloc(0);
    return pending;
  }
}

export function message(type: string, body: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = type.charCodeAt(0);
  out.writeInt32BE(body.length + 4, 1);
  body.copy(out, 5);
  return out;
}

export function cstring(text: string): Buffer {
  return Buffer.from(text + '\0', 'utf8');
}

export function int32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeInt32BE(value);
  return b;
}

export function int16(value: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeInt16BE(value);
  return b;
}

/** Reads NUL-terminated strings and integers from a message body. */
export class BodyReader {
  offset = 0;
  constructor(private readonly body: Buffer) {}
  cstring(): string {
    const end = this.body.indexOf(0, this.offset);
    if (end < 0) throw new DataProxyError('PROTOCOL', `unterminated string at offset ${this.offset}`);
    const text = this.body.toString('utf8', this.offset, end);
    this.offset = end + 1;
    return text;
  }
  int32(): number {
    const v = this.body.readInt32BE(this.offset);
    this.offset += 4;
    return v;
  }
  int16(): number {
    const v = this.body.readInt16BE(this.offset);
    this.offset += 2;
    return v;
  }
  bytes(n: number): Buffer {
    const v = this.body.subarray(this.offset, this.offset + n);
    this.offset += n;
    return v;
  }
  rest(): Buffer {
    return this.body.subarray(this.offset);
  }
}

export interface StartupPacket {
  kind: 'startup' | 'ssl' | 'gssenc' | 'cancel' | 'unsupported';
  version: number;
  parameters: Record<string, string>;
  cancel?: { processId: number; secretKey: number };
}

export function parseStartup(raw: Buffer): StartupPacket {
  const code = raw.readInt32BE(4);
  if (code === SSL_REQUEST_CODE) return { kind: 'ssl', version: code, parameters: {} };
  if (code === GSSENC_REQUEST_CODE) return { kind: 'gssenc', version: code, parameters: {} };
  if (code === CANCEL_REQUEST_CODE) {
    return { kind: 'cancel', version: code, parameters: {}, cancel: { processId: raw.readInt32BE(8), secretKey: raw.readInt32BE(12) } };
  }
  if (code >> 16 !== 3) return { kind: 'unsupported', version: code, parameters: {} };
  const reader = new BodyReader(raw.subarray(8));
  const parameters: Record<string, string> = {};
  for (let i = 0; i < 64; i++) {
    const key = reader.cstring();
    if (key === '') break;
    parameters[key] = reader.cstring();
  }
  return { kind: 'startup', version: code, parameters };
}

export function startupPacket(parameters: Record<string, string>): Buffer {
  const parts = [int32(PROTOCOL_VERSION_3)];
  for (const [k, v] of Object.entries(parameters)) parts.push(cstring(k), cstring(v));
  parts.push(Buffer.from([0]));
  const body = Buffer.concat(parts);
  return Buffer.concat([int32(body.length + 4), body]);
}

export function cancelRequestPacket(processId: number, secretKey: number): Buffer {
  return Buffer.concat([int32(16), int32(CANCEL_REQUEST_CODE), int32(processId), int32(secretKey)]);
}

/** ErrorResponse / NoticeResponse fields by their one-letter codes (S, V, C, M, D, H, P, …). */
export function parseErrorFields(body: Buffer): Record<string, string> {
  const fields: Record<string, string> = {};
  let offset = 0;
  while (offset < body.length && body[offset] !== 0) {
    const code = String.fromCharCode(body[offset]!);
    const end = body.indexOf(0, offset + 1);
    if (end < 0) break;
    fields[code] = body.toString('utf8', offset + 1, end);
    offset = end + 1;
  }
  return fields;
}

export function errorResponse(code: string, text: string, severity = 'ERROR'): Buffer {
  return message('E', Buffer.concat([
    cstring(`S${severity}`), cstring(`V${severity}`), cstring(`C${code}`), cstring(`M${text}`), Buffer.from([0]),
  ]));
}

export const readyForQuery = (status: string): Buffer => message('Z', Buffer.from(status, 'latin1'));
export const authenticationOk = (): Buffer => message('R', int32(0));
export const parameterStatus = (name: string, value: string): Buffer => message('S', Buffer.concat([cstring(name), cstring(value)]));
export const backendKeyData = (processId: number, secretKey: number): Buffer => message('K', Buffer.concat([int32(processId), int32(secretKey)]));
export const syncMessage = (): Buffer => message('S');
export const terminateMessage = (): Buffer => message('X');

/** Query: one allocation, as the simple protocol's rewritten statements take this path once per query. */
export function queryMessage(sql: string): Buffer {
  const length = Buffer.byteLength(sql);
  const out = Buffer.allocUnsafe(6 + length);
  out[0] = 0x51;
  out.writeInt32BE(length + 5, 1);
  out.write(sql, 5, 'utf8');
  out[5 + length] = 0;
  return out;
}

export function parseMessage(name: string, sql: string, paramTypes: number[]): Buffer {
  return message('P', Buffer.concat([cstring(name), cstring(sql), int16(paramTypes.length), ...paramTypes.map(int32)]));
}

/** A Parse message's parts: statement name, query text and the parameter type oids. */
export function readParse(body: Buffer): { name: string; sql: string; paramTypes: number[] } {
  const r = new BodyReader(body);
  const name = r.cstring();
  const sql = r.cstring();
  const n = r.int16();
  const paramTypes: number[] = [];
  for (let i = 0; i < n; i++) paramTypes.push(r.int32());
  return { name, sql, paramTypes };
}

/** RowDescription column names (for tests and metadata hiding). */
export function readRowDescriptionNames(body: Buffer): string[] {
  const r = new BodyReader(body);
  const n = r.int16();
  const names: string[] = [];
  for (let i = 0; i < n; i++) {
    names.push(r.cstring());
    r.bytes(18);
  }
  return names;
}
