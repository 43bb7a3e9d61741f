import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { test } from 'node:test';
import {
  basicCredentials,
  parseAuthority,
  parseClientHelloSni,
  parseRequestHead,
  parseSocksGreeting,
  parseSocksRequest,
  parseSocksUserPass,
  ProtocolError,
  socksReply,
} from './wire.ts';

const head = (text: string, max = 16 * 1024) => parseRequestHead(Buffer.from(text, 'latin1'), max);

test('request head: CONNECT with headers', () => {
  const parsed = head('CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\nProxy-Authorization: Basic c2FsZXM6czNjcmV0\r\n\r\nextra');
  assert.equal(parsed?.method, 'CONNECT');
  assert.deepEqual(parseAuthority(parsed!.target), { host: '::1', port: 443 });
  assert.equal(parsed?.length, 'CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\nProxy-Authorization: Basic c2FsZXM6czNjcmV0\r\n\r\n'.length);
  assert.deepEqual(basicCredentials(parsed!.headers[1]![1]), { username: 'sales', password: 's3cret' });
});

test('request head: incomplete is undefined, not an error', () => {
  assert.equal(head('CONNECT a:1 HTTP/1.1\r\nHost: a'), undefined);
  assert.equal(head(''), undefined);
});

const malformed: [name: string, text: string, code: string][] = [
  ['binary garbage', '\x16\x03\x01\x02\x00\x01\x00', 'MALFORMED_REQUEST'],
  ['SOCKS greeting on the HTTP port', '\x05\x01\x00', 'MALFORMED_REQUEST'],
  ['missing version', 'CONNECT a:1\r\n\r\n', 'MALFORMED_REQUEST'],
  ['HTTP/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'MALFORMED_REQUEST'],
  ['header without a colon', 'CONNECT a:1 HTTP/1.1\r\nHost a\r\n\r\n', 'MALFORMED_REQUEST'],
  ['obs-fold continuation line', 'CONNECT a:1 HTTP/1.1\r\nHost: a\r\n b\r\n\r\n', 'MALFORMED_REQUEST'],
  ['huge head', `CONNECT a:1 HTTP/1.1\r\nX: ${'a'.repeat(20_000)}`, 'HEADER_TOO_LARGE'],
];
for (const [name, text, code] of malformed) {
  test(`request head: ${name} → ${code}`, () => {
    assert.throws(() => head(text), (err: unknown) => err instanceof ProtocolError && err.code === code);
  });
}

const badAuthorities = ['a', 'a:0', 'a:65536', ':80', 'user@a:80', '[::1:80', 'a b:80'];
for (const authority of badAuthorities) {
  test(`CONNECT target ${JSON.stringify(authority)} is rejected`, () => {
    assert.throws(() => parseAuthority(authority), ProtocolError);
  });
}

test('SOCKS5: greeting, RFC 1929 credentials and each address type', () => {
  assert.deepEqual(parseSocksGreeting(Buffer.from([5, 2, 0, 2])), { methods: [0, 2], length: 4 });
  assert.equal(parseSocksGreeting(Buffer.from([5, 2, 0])), undefined);
  assert.throws(() => parseSocksGreeting(Buffer.from('GET / HTTP/1.1')), ProtocolError);
  assert.deepEqual(parseSocksUserPass(Buffer.from([1, 1, 0x75, 2, 0x70, 0x77])), { username: 'u', password: 'pw', length: 6 });
  const v4 = parseSocksRequest(Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90]));
  assert.deepEqual([v4?.host, v4?.port], ['127.0.0.1', 8080]);
  const v6 = parseSocksRequest(Buffer.from([5, 1, 0, 4, ...new Array(15).fill(0), 1, 0, 80]));
  assert.deepEqual([v6?.host, v6?.port], ['0:0:0:0:0:0:0:1', 80]);
  const name = Buffer.from('api.partner.test');
  const domain = parseSocksRequest(Buffer.concat([Buffer.from([5, 1, 0, 3, name.length]), name, Buffer.from([1, 187])]));
  assert.deepEqual([domain?.host, domain?.port], ['api.partner.test', 443]);
  assert.throws(() => parseSocksRequest(Buffer.from([5, 1, 0, 9, 0, 0, 0])), (e: unknown) => e instanceof ProtocolError && e.code === 'UNSUPPORTED');
  assert.throws(() => parseSocksRequest(Buffer.from([5, 1, 0, 3, 3, 0x61, 0x0a, 0x62, 0, 80])), ProtocolError);
  assert.deepEqual([...socksReply(0, { address: '::1', port: 80 })].slice(0, 4), [5, 0, 0, 4]);
  assert.deepEqual([...socksReply(2)], [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
});

test('SNI: read from a real ClientHello made by node:tls', async () => {
  const hello = await new Promise<Buffer>((resolve) => {
    const server = createServer((socket) => {
      socket.once('data', (chunk: Buffer) => {
        resolve(chunk);
        socket.destroy();
        server.close();
      });
    });
    server.listen(0, '127.0.0.1', () => {
      const client = tlsConnect({ port: (server.address() as { port: number }).port, host: '127.0.0.1', servername: 'api.partner.test' });
      client.on('error', () => {});
    });
  });
  assert.deepEqual(parseClientHelloSni(hello), { kind: 'sni', serverName: 'api.partner.test' });
  assert.equal(parseClientHelloSni(hello.subarray(0, 20)), undefined, 'a partial record asks for more');
  assert.deepEqual(parseClientHelloSni(Buffer.from('GET / HTTP/1.1\r\n')), { kind: 'not_tls' });
});
