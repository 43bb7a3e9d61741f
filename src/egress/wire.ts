/**
 * Pure parsers for what clients send the proxy before a tunnel exists: the HTTP/1.1 request head (RFC 9112, CONNECT
 * authority-form and absolute-form targets), SOCKS5 (RFC 1928) with username/password (RFC 1929), and the TLS
 * ClientHello's server_name (RFC 8446 §4.1.2, RFC 6066 §3). Each returns `undefined` while more bytes are needed and
 * throws `ProtocolError` on bytes that can never become valid.
 */
export type ProtocolErrorCode = 'MALFORMED_REQUEST' | 'HEADER_TOO_LARGE' | 'UNSUPPORTED' | 'BAD_SOCKS';

export class ProtocolError extends Error {
  constructor(
    readonly code: ProtocolErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'ProtocolError';
  }
}

export interface RequestHead {
  method: string;
  target: string;
  version: string;
  headers: [name: string, value: string][];
  /** Bytes of the head including the blank line that ends it. */
  length: number;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const CRLFCRLF = Buffer.from('\r\n\r\n');

/** Parses the request head at the start of `buffer`; undefined until its blank line has arrived. */
export function parseRequestHead(buffer: Buffer, maxBytes: number): RequestHead | undefined {
  const end = buffer.indexOf(CRLFCRLF);
  if (end < 0) {
    if (buffer.length > maxBytes) throw new ProtocolError('HEADER_TOO_LARGE', `request head exceeds ${maxBytes} bytes`);
    // A request line must start with a method token; reject binary garbage (a TLS hello, a SOCKS greeting) at once.
    const firstSpace = buffer.indexOf(0x20);
    const probe = buffer.subarray(0, firstSpace < 0 ? Math.min(buffer.length, 32) : firstSpace).toString('latin1');
    if (probe.length > 0 && (!TOKEN.test(probe) || probe.length > 31)) {
      throw new ProtocolError('MALFORMED_REQUEST', 'not an HTTP request line');
    }
    return undefined;
  }
  if (end + 4 > maxBytes) throw new ProtocolError('HEADER_TOO_LARGE', `request head exceeds ${maxBytes} bytes`);
  const lines = buffer.subarray(0, end).toString('latin1').split('\r\n');
  const requestLine = lines[0]!;
  const match = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) (HTTP\/1\.[01])$/.exec(requestLine);
  if (!match) throw new ProtocolError('MALFORMED_REQUEST', `malformed request line: ${JSON.stringify(requestLine.slice(0, 120))}`);
  const headers: [string, string][] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(':');
    const name = colon > 0 ? line.slice(0, colon) : '';
    if (!TOKEN.test(name)) throw new ProtocolError('MALFORMED_REQUEST', `malformed header line ${i + 1}: ${JSON.stringify(line.slice(0, 80))}`);
    const value = line.slice(colon + 1).trim();
    if (/[\x00-\x08\x0a-\x1f\x7f]/.test(value)) throw new ProtocolError('MALFORMED_REQUEST', `control character in header ${name}`);
    headers.push([name, value]);
  }
  return { method: match[1]!, target: match[2]!, version: match[3]!, headers, length: end + 4 };
}

export function headerValue(head: RequestHead, name: string): string | undefined {
  const lower = name.toLowerCase();
  return head.headers.find(([n]) => n.toLowerCase() === lower)?.[1];
}

/** `host:port` or `[v6]:port` (CONNECT's authority-form); the port is required. */
export function parseAuthority(authority: string): { host: string; port: number } {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:/[\]@]+)):(\d{1,5})$/.exec(authority);
  const port = Number(match?.[3]);
  if (!match || port < 1 || port > 65535) {
    throw new ProtocolError('MALFORMED_REQUEST', `CONNECT target must be HOST:PORT, got ${JSON.stringify(authority.slice(0, 120))}`);
  }
  return { host: match[1] ?? match[2]!, port };
}

/** `http://host[:port]/path` (absolute-form) → host, port and the origin-form path to send upstream. */
export function parseAbsoluteTarget(target: string): { host: string; port: number; path: string } {
  let url: URL;
  try {
    url = new URL(target);
  } catch {
    throw new ProtocolError('MALFORMED_REQUEST', `a proxy request needs an absolute http:// URL, got ${JSON.stringify(target.slice(0, 120))}`);
  }
  if (url.protocol !== 'http:') throw new ProtocolError('UNSUPPORTED', `scheme ${url.protocol} is not proxied in absolute-form; use CONNECT`);
  if (url.username || url.password) throw new ProtocolError('MALFORMED_REQUEST', 'credentials in the request URL are not forwarded');
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  return { host, port: url.port ? Number(url.port) : 80, path: `${url.pathname}${url.search}` };
}

/** `Basic base64(user:pass)` (RFC 7617) → credentials, or undefined when absent or not Basic. */
export function basicCredentials(value: string | undefined): { username: string; password: string } | undefined {
  const match = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(value ?? '');
  if (!match) return undefined;
  const decoded = Buffer.from(match[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

// ---- SOCKS5 (RFC 1928, RFC 1929) ----

export const SOCKS = {
  version: 5,
  methodNone: 0x00,
  methodUserPass: 0x02,
  methodUnacceptable: 0xff,
  cmdConnect: 0x01,
  atypIPv4: 0x01,
  atypDomain: 0x03,
  atypIPv6: 0x04,
  reply: {
    succeeded: 0x00,
    generalFailure: 0x01,
    notAllowed: 0x02,
    networkUnreachable: 0x03,
    hostUnreachable: 0x04,
    connectionRefused: 0x05,
    ttlExpired: 0x06,
    commandNotSupported: 0x07,
    addressTypeNotSupported: 0x08,
  },
} as const;

export function parseSocksGreeting(buffer: Buffer): { methods: number[]; length: number } | undefined {
  if (buffer.length < 1) return undefined;
  if (buffer[0] !== SOCKS.version) throw new ProtocolError('BAD_SOCKS', `not SOCKS5: first byte is 0x${buffer[0]!.toString(16).padStart(2, '0')}`);
  if (buffer.length < 2) return undefined;
  const count = buffer[1]!;
  if (count === 0) throw new ProtocolError('BAD_SOCKS', 'SOCKS5 greeting offers no methods');
  if (buffer.length < 2 + count) return undefined;
  return { methods: [...buffer.subarray(2, 2 + count)], length: 2 + count };
}

export function parseSocksUserPass(buffer: Buffer): { username: string; password: string; length: number } | undefined {
  if (buffer.length < 2) return undefined;
  if (buffer[0] !== 0x01) throw new ProtocolError('BAD_SOCKS', `RFC 1929 sub-negotiation version must be 1, got ${buffer[0]}`);
  const userLength = buffer[1]!;
  if (buffer.length < 3 + userLength) return undefined;
  const passLength = buffer[2 + userLength]!;
  const length = 3 + userLength + passLength;
  if (buffer.length < length) return undefined;
  return {
    username: buffer.subarray(2, 2 + userLength).toString('utf8'),
    password: buffer.subarray(3 + userLength, length).toString('utf8'),
    length,
  };
}

export interface SocksRequest {
  command: number;
  addressType: number;
  host: string;
  port: number;
  length: number;
}

export function parseSocksRequest(buffer: Buffer): SocksRequest | undefined {
  if (buffer.length < 5) return undefined;
  if (buffer[0] !== SOCKS.version) throw new ProtocolError('BAD_SOCKS', `SOCKS5 request version must be 5, got ${buffer[0]}`);
  const command = buffer[1]!;
  const addressType = buffer[3]!;
  let host: string;
  let offset: number;
  if (addressType === SOCKS.atypIPv4) {
    if (buffer.length < 10) return undefined;
    host = [...buffer.subarray(4, 8)].join('.');
    offset = 8;
  } else if (addressType === SOCKS.atypIPv6) {
    if (buffer.length < 22) return undefined;
    const groups: string[] = [];
    for (let i = 0; i < 8; i++) groups.push(buffer.readUInt16BE(4 + 2 * i).toString(16));
    host = groups.join(':');
    offset = 20;
  } else if (addressType === SOCKS.atypDomain) {
    const nameLength = buffer[4]!;
    if (nameLength === 0) throw new ProtocolError('BAD_SOCKS', 'SOCKS5 request has an empty domain name');
    if (buffer.length < 5 + nameLength + 2) return undefined;
    host = buffer.subarray(5, 5 + nameLength).toString('latin1');
    if (!/^[A-Za-z0-9._:-]+$/.test(host)) throw new ProtocolError('BAD_SOCKS', `SOCKS5 domain name has invalid characters: ${JSON.stringify(host.slice(0, 80))}`);
    offset = 5 + nameLength;
  } else {
    throw new ProtocolError('UNSUPPORTED', `SOCKS5 address type ${addressType} is not supported`);
  }
  const port = buffer.readUInt16BE(offset);
  if (port === 0) throw new ProtocolError('BAD_SOCKS', 'SOCKS5 request names port 0');
  return { command, addressType, host, port, length: offset + 2 };
}

/** A SOCKS5 reply with BND.ADDR/BND.PORT; an absent address is sent as 0.0.0.0:0. */
export function socksReply(code: number, bound?: { address: string; port: number }): Buffer {
  const address = bound?.address ?? '0.0.0.0';
  if (address.includes(':')) {
    const reply = Buffer.alloc(22);
    reply.set([SOCKS.version, code, 0, SOCKS.atypIPv6]);
    expandIPv6(address).forEach((group, i) => reply.writeUInt16BE(group, 4 + 2 * i));
    reply.writeUInt16BE(bound?.port ?? 0, 20);
    return reply;
  }
  const reply = Buffer.alloc(10);
  reply.set([SOCKS.version, code, 0, SOCKS.atypIPv4, ...address.split('.').map(Number)]);
  reply.writeUInt16BE(bound?.port ?? 0, 8);
  return reply;
}

function expandIPv6(address: string): number[] {
  const [head = '', tail = ''] = address.split('::');
  const parse = (part: string): number[] => (part ? part.split(':').map((g) => parseInt(g, 16)) : []);
  const left = parse(head);
  const right = address.includes('::') ? parse(tail) : [];
  return [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right];
}

// ---- TLS ClientHello server_name ----

export type SniResult = { kind: 'sni'; serverName: string } | { kind: 'no_sni' } | { kind: 'not_tls' };

/**
 * Reads the server_name from a ClientHello at the start of `buffer` (the first TLS record only; a ClientHello that
 * does not fit one 16 KiB record is treated as having no SNI). Undefined while the record is incomplete.
 */
export function parseClientHelloSni(buffer: Buffer): SniResult | undefined {
  if (buffer.length < 1) return undefined;
  if (buffer[0] !== 0x16) return { kind: 'not_tls' };
  if (buffer.length < 5) return undefined;
  const recordLength = buffer.readUInt16BE(3);
  if (recordLength > 16384 + 2048) return { kind: 'not_tls' };
  if (buffer.length < 5 + recordLength) return undefined;
  const hello = buffer.subarray(5, 5 + recordLength);
  if (hello[0] !== 0x01) return { kind: 'not_tls' };
  try {
    let at = 4 + 2 + 32; // handshake header, legacy_version, random
    at += 1 + hello[at]!; // session id
    at += 2 + hello.readUInt16BE(at); // cipher suites
    at += 1 + hello[at]!; // compression methods
    if (at + 2 > hello.length) return { kind: 'no_sni' };
    const extensionsEnd = Math.min(hello.length, at + 2 + hello.readUInt16BE(at));
    at += 2;
    while (at + 4 <= extensionsEnd) {
      const type = hello.readUInt16BE(at);
      const length = hello.readUInt16BE(at + 2);
      at += 4;
      if (type === 0x0000) {
        // server_name_list: u16 length, then entries of (u8 type, u16 length, name); type 0 is host_name.
        let entry = at + 2;
        while (entry + 3 <= at + length) {
          const nameType = hello[entry]!;
          const nameLength = hello.readUInt16BE(entry + 1);
          if (nameType === 0) return { kind: 'sni', serverName: hello.subarray(entry + 3, entry + 3 + nameLength).toString('latin1') };
          entry += 3 + nameLength;
        }
        return { kind: 'no_sni' };
      }
      at += length;
    }
    return { kind: 'no_sni' };
  } catch {
    return { kind: 'not_tls' };
  }
}
