import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { connect, createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { EgressProxy, parseEgressConfig } from '../../src/egress/index.ts';
import type { EgressRecord } from '../../src/model/index.ts';

const run = promisify(execFile);
export const CLI = join(import.meta.dirname, 'cli.ts');

/** Polls until `check` is true; bounded so a broken proxy fails the test instead of hanging it. */
export async function waitFor(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface RunningProxy {
  proxy: EgressProxy;
  records: EgressRecord[];
  http: string;
  socks5: string;
  /** Waits for `count` records in total and returns them. */
  recordsAfter(count: number): Promise<EgressRecord[]>;
  close(): Promise<void>;
}

export async function startProxy(document: Record<string, unknown>): Promise<RunningProxy> {
  const records: EgressRecord[] = [];
  const config = parseEgressConfig({ listen: '127.0.0.1:0', socks5: '127.0.0.1:0', ...document }, 'test config');
  const proxy = new EgressProxy({ config, onRecord: (r) => records.push(r) });
  await proxy.start();
  const addresses = proxy.addresses();
  return {
    proxy,
    records,
    http: addresses['http']!,
    socks5: addresses['socks5']!,
    async recordsAfter(count) {
      await waitFor(() => records.length >= count, `${count} egress records (have ${records.length})`);
      return records;
    },
    close: () => proxy.close(),
  };
}

export interface CurlResult {
  code: number;
  status: string;
  /** The proxy's answer to curl's CONNECT (-p, https through -x). */
  connectStatus: string;
  body: string;
  /** curl's -w counters: bytes sent in the request (headers and body), received as headers plus decoded body. */
  uploaded: number;
  downloaded: number;
  stderr: string;
}

/** Runs the real curl; the exit code is data, not an exception. */
export async function curl(args: string[]): Promise<CurlResult> {
  const marker = '\n--curl-stats--';
  try {
    const { stdout, stderr } = await run('curl', ['-sS', '--max-time', '10', '-w', `${marker}%{http_code} %{size_request} %{size_header} %{size_download} %{http_connect}`, ...args], { maxBuffer: 64 * 1024 * 1024 });
    return parse(stdout, stderr, 0);
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return parse(e.stdout ?? '', e.stderr ?? '', e.code);
  }
  function parse(stdout: string, stderr: string, code: number): CurlResult {
    const at = stdout.lastIndexOf(marker);
    const [status = '000', request = '0', header = '0', download = '0', connectStatus = '000'] = stdout.slice(at + marker.length).split(' ');
    return { code, status, connectStatus, body: stdout.slice(0, at), uploaded: Number(request), downloaded: Number(header) + Number(download), stderr };
  }
}

export interface Origin {
  port: number;
  /** Raw socket bytes of each finished connection, as the origin counted them. */
  connections: { read: number; written: number }[];
  close(): Promise<void>;
}

function trackBytes(server: HttpServer | NetServer, connections: Origin['connections']): void {
  server.on('connection', (socket: Socket) => socket.on('close', () => connections.push({ read: socket.bytesRead, written: socket.bytesWritten })));
}

function originHandler(req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): void {
  let size = 0;
  req.on('data', (chunk: Buffer) => (size += chunk.length));
  req.on('end', () => {
    const bytes = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('bytes') ?? '13');
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-received': String(size) });
    res.end(Buffer.alloc(bytes, 0x61));
  });
}

/** An HTTP origin on loopback; `?bytes=N` answers N bytes. */
export async function startHttpOrigin(host = '127.0.0.1'): Promise<Origin> {
  const connections: Origin['connections'] = [];
  const server = createHttpServer({ keepAliveTimeout: 100 }, originHandler);
  trackBytes(server, connections);
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return { port: (server.address() as { port: number }).port, connections, close: () => closeServer(server) };
}

/** A self-signed certificate made with openssl for this test run. */
export async function selfSignedCert(names: string[]): Promise<{ key: string; cert: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'custos-egress-cert-'));
  try {
    await run('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', `/CN=${names[0]}`, '-addext', `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}`,
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
    ]);
    return { key: readFileSync(join(dir, 'key.pem'), 'utf8'), cert: readFileSync(join(dir, 'cert.pem'), 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function startHttpsOrigin(tls: { key: string; cert: string }): Promise<Origin> {
  const connections: Origin['connections'] = [];
  const server = createHttpsServer({ ...tls, keepAliveTimeout: 100 }, originHandler);
  trackBytes(server, connections);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as { port: number }).port, connections, close: () => closeServer(server) };
}

/** Reads until the client half-closes, then answers with what it read reversed — a half-close probe. */
export async function startHalfCloseOrigin(): Promise<Origin> {
  const connections: Origin['connections'] = [];
  const server = createNetServer({ allowHalfOpen: true }, (socket) => {
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => socket.end(Buffer.from(Buffer.concat(chunks).toString('latin1').split('').reverse().join(''), 'latin1')));
    socket.on('error', () => {});
  });
  trackBytes(server, connections);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as { port: number }).port, connections, close: () => closeServer(server) };
}

/** Echoes every chunk back: an interactive tunnel that stays open until the client ends it. */
export async function startEchoOrigin(): Promise<Origin> {
  const connections: Origin['connections'] = [];
  const server = createNetServer((socket) => {
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  trackBytes(server, connections);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as { port: number }).port, connections, close: () => closeServer(server) };
}

/** Opens a CONNECT tunnel by hand and resolves with the socket once the proxy answered 200. */
export async function openTunnel(proxy: string, target: string, credentials = auth()): Promise<Socket> {
  const [host, port] = [proxy.slice(0, proxy.lastIndexOf(':')), Number(proxy.slice(proxy.lastIndexOf(':') + 1))];
  const socket = connect(port, host);
  socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\nProxy-Authorization: Basic ${Buffer.from(credentials).toString('base64')}\r\n\r\n`);
  const head = await readUntil(socket, (text) => text.includes('\r\n\r\n'));
  if (!head.startsWith('HTTP/1.1 200')) {
    socket.destroy();
    throw new Error(`proxy answered ${head.split('\r\n')[0]}`);
  }
  return socket;
}

/** Reads from a socket until `done(text)` or the socket ends; bounded by a timeout. */
export function readUntil(socket: Socket, done: (text: string) => boolean, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => finish(new Error(`no complete answer within ${timeoutMs} ms (got ${JSON.stringify(text.slice(0, 200))})`)), timeoutMs);
    const onData = (c: Buffer): void => {
      text += c.toString('latin1');
      if (done(text)) finish();
    };
    const onEnd = (): void => finish();
    const finish = (err?: Error): void => {
      clearTimeout(timer);
      socket.off('data', onData).off('end', onEnd).off('close', onEnd);
      if (err) reject(err);
      else resolve(text);
    };
    socket.on('data', onData).once('end', onEnd).once('close', onEnd).on('error', () => {});
  });
}

function closeServer(server: HttpServer | NetServer): Promise<void> {
  return new Promise((resolve) => {
    (server as HttpServer).closeAllConnections?.();
    server.close(() => resolve());
  });
}

/** `custos egress …` as a child process; resolves once it printed its listening line on stderr. */
export async function spawnCli(args: string[]): Promise<{ child: ChildProcess; stderr: () => string; listening: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CUSTOS_LOG_LEVEL: 'info' } });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  child.stdout!.resume();
  await waitFor(() => /: listening [^\n]+\n/.test(stderr) || child.exitCode !== null, `custos ${args.join(' ')} to start`, 20_000);
  const listening = /: listening (\S+)\n/.exec(stderr)?.[1] ?? '';
  return { child, stderr: () => stderr, listening };
}

export function auth(user = 'sales', password = 's3cret'): string {
  return `${user}:${password}`;
}
