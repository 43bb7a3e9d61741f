/**
 * The database behind the proxy: a real PostgreSQL over TCP (one backend per client session), or PGlite in-process
 * (`embedded`, for the demo), which speaks the same wire protocol through `execProtocolRaw`.
 */
import { connect, type Socket } from 'node:net';
import { createHash } from 'node:crypto';
import type { PGlite } from '@electric-sql/pglite';
import { DataProxyError } from './errors.ts';
import { takeDescriptor } from './relay.ts';
import { ScramClientExchange } from './scram.ts';
import {
  BodyReader, cancelRequestPacket, cstring, int32, message, MessageReader, parameterStatus, parseErrorFields, startupPacket, type Message,
} from './wire.ts';

export interface UpstreamSession {
  /** Backend messages the client must see after authentication (ParameterStatus…), without BackendKeyData. */
  readonly greeting: Buffer[];
  write(data: Buffer): void;
  /**
   * Backend bytes as they arrive. The chunk's memory may be reused for the next read: a handler that keeps a
   * reference to it after returning (a socket write still queued) returns true, and the next read gets fresh memory.
   */
  onData(handler: (chunk: Buffer) => boolean): void;
  onClose(handler: (err?: Error) => void): void;
  close(): void;
  cancel(): Promise<void>;
  /**
   * For the native relay: stops Node reading the backend's socket and returns its descriptor with the bytes read
   * but not yet delivered; `release` then drops Node's handle without ending the connection. Undefined when the
   * upstream has no socket (embedded).
   */
  detach?(): { fd: number; pending: Buffer; release(): void } | undefined;
}

export interface Upstream {
  readonly kind: 'postgres' | 'embedded';
  /** Opens a backend session; `parameters` are the client's allowed start-up parameters. */
  open(parameters: Record<string, string>): Promise<UpstreamSession>;
}

/** Upstream read buffer: Node's own size for a stream read. */
const READ_BYTES = 64 * 1024;

/** Start-up parameters a client may pass through. `options` is not among them: it could set search_path. */
export const FORWARDED_PARAMETERS = new Set(['application_name', 'client_encoding', 'DateStyle', 'datestyle', 'TimeZone', 'timezone', 'extra_float_digits', 'IntervalStyle', 'intervalstyle']);

export class PostgresUpstream implements Upstream {
  readonly kind = 'postgres';
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly password: string | undefined;
  readonly database: string;

  constructor(readonly url: string) {
    const u = new URL(url);
    if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') throw new DataProxyError('CONFIG', `upstream "${url}" is not a postgres:// URL or "embedded"`);
    this.host = decodeURIComponent(u.hostname || '127.0.0.1').replace(/^\[|\]$/g, '');
    this.port = Number(u.port || 5432);
    this.user = decodeURIComponent(u.username || 'postgres');
    this.password = u.password ? decodeURIComponent(u.password) : undefined;
    this.database = decodeURIComponent(u.pathname.slice(1) || this.user);
  }

  async open(parameters: Record<string, string>): Promise<UpstreamSession> {
    // Reads land in one reused buffer rather than a fresh allocation and a stream event per read.
    let readBuffer = Buffer.allocUnsafe(READ_BYTES);
    let deliver: (chunk: Buffer) => boolean = () => false;
    const early: Buffer[] = [];
    const socket = connect({
      host: this.host, port: this.port, noDelay: true,
      onread: {
        buffer: () => readBuffer,
        callback: (n: number, buffer: Uint8Array): boolean => {
          if (deliver(Buffer.from(buffer.buffer, buffer.byteOffset, n))) readBuffer = Buffer.allocUnsafe(READ_BYTES);
          // false would pause the socket.
          return true;
        },
      },
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', (err) => reject(new DataProxyError('UPSTREAM', `upstream ${this.host}:${this.port}: ${err.message}`)));
    });
    socket.write(startupPacket({ user: this.user, database: this.database, ...parameters, standard_conforming_strings: 'on' }));
    const reader = new MessageReader();
    const greeting: Buffer[] = [];
    let backendKey: { processId: number; secretKey: number } | undefined;
    let scram: ScramClientExchange | undefined;
    const leftover = await new Promise<Message[]>((resolve, reject) => {
      const fail = (err: Error): void => {
        socket.destroy();
        reject(err instanceof DataProxyError ? err : new DataProxyError('UPSTREAM', err.message));
      };
      const onData = (view: Buffer): boolean => {
        // The start-up exchange keeps partial messages: it reads a copy.
        const chunk = Buffer.from(view);
        try {
          const messages = reader.push(chunk);
          for (let i = 0; i < messages.length; i++) {
            const m = messages[i]!;
            if (m.type === 'R') {
              const r = new BodyReader(m.body);
              const code = r.int32();
              if (code === 0) continue;
              if (code === 3 || code === 5) {
                if (this.password === undefined) throw new DataProxyError('UPSTREAM', 'upstream asks for a password and the upstream URL has none');
                const pw = code === 3 ? this.password : 'md5' + md5(md5(this.password + this.user) + r.bytes(4).toString('latin1'));
                socket.write(message('p', cstring(pw)));
              } else if (code === 10) {
                if (this.password === undefined) throw new DataProxyError('UPSTREAM', 'upstream asks for SCRAM and the upstream URL has no password');
                scram = new ScramClientExchange(this.password);
                const first = Buffer.from(scram.first());
                socket.write(message('p', Buffer.concat([cstring('SCRAM-SHA-256'), int32(first.length), first])));
              } else if (code === 11) {
                socket.write(message('p', Buffer.from(scram!.final(r.rest().toString()))));
              } else if (code === 12) {
                scram!.verify(r.rest().toString());
              } else {
                throw new DataProxyError('UPSTREAM', `upstream asks for unsupported authentication (code ${code})`);
              }
            } else if (m.type === 'E') {
              throw new DataProxyError('UPSTREAM', `upstream refused the session: ${parseErrorFields(m.body)['M'] ?? 'error'}`);
            } else if (m.type === 'K') {
              backendKey = { processId: m.body.readInt32BE(0), secretKey: m.body.readInt32BE(4) };
            } else if (m.type === 'Z') {
              // Until the session takes over, anything the backend sends (a notice) waits.
              deliver = (c) => {
                early.push(Buffer.from(c));
                return false;
              };
              resolve(messages.slice(i + 1));
              return false;
            } else {
              greeting.push(Buffer.from(m.raw));
            }
          }
        } catch (err) {
          fail(err as Error);
        }
        return false;
      };
      deliver = onData;
      socket.once('close', () => fail(new DataProxyError('UPSTREAM', 'upstream closed during start-up')));
    });
    socket.removeAllListeners('close');
    socket.removeAllListeners('error');
    if (leftover.length > 0) throw new DataProxyError('PROTOCOL', 'upstream sent messages before the first query');
    const { host, port } = this;
    return {
      greeting,
      write: (data) => socket.write(data),
      onData: (handler) => {
        deliver = handler;
        for (const chunk of early.splice(0)) handler(chunk);
      },
      onClose: (handler) => {
        socket.on('error', (err) => handler(err));
        socket.on('close', () => handler());
      },
      close: () => socket.end(),
      detach: () => {
        const fd = takeDescriptor(socket);
        if (fd === undefined) return undefined;
        return {
          fd,
          pending: Buffer.concat(early.splice(0)),
          release: () => {
            socket.removeAllListeners('close');
            socket.removeAllListeners('error');
            socket.on('error', () => undefined);
            socket.destroy();
          },
        };
      },
      cancel: async () => {
        if (!backendKey) return;
        const s: Socket = connect({ host, port });
        s.on('error', () => undefined);
        s.end(cancelRequestPacket(backendKey.processId, backendKey.secretKey));
      },
    };
  }
}

function md5(text: string): string {
  return createHash('md5').update(text).digest('hex');
}

/**
 * PGlite has one backend for the whole process: sessions share it, and their writes run one at a time. Good for
 * the demo (`custos serve --demo`) and tests; a real deployment points the proxy at PostgreSQL.
 */
export class EmbeddedUpstream implements Upstream {
  readonly kind = 'embedded';
  private chain: Promise<unknown> = Promise.resolve();
  constructor(readonly db: PGlite) {}

  async open(): Promise<UpstreamSession> {
    const handlers: ((chunk: Buffer) => boolean)[] = [];
    const closers: ((err?: Error) => void)[] = [];
    const greeting = [
      parameterStatus('server_version', '17.5 (PGlite)'),
      parameterStatus('server_encoding', 'UTF8'),
      parameterStatus('client_encoding', 'UTF8'),
      parameterStatus('DateStyle', 'ISO, MDY'),
      parameterStatus('integer_datetimes', 'on'),
      parameterStatus('standard_conforming_strings', 'on'),
      parameterStatus('TimeZone', 'UTC'),
    ];
    let open = true;
    return {
      greeting,
      write: (data) => {
        const copy = Buffer.from(data);
        this.chain = this.chain.then(async () => {
          if (!open) return;
          const out = await this.db.execProtocolRaw(copy, { syncToFs: false });
          if (out.length > 0) for (const h of handlers) h(Buffer.from(out.buffer, out.byteOffset, out.byteLength));
        }).catch((err: Error) => closers.forEach((c) => c(err)));
      },
      onData: (handler) => handlers.push(handler),
      onClose: (handler) => closers.push(handler),
      close: () => {
        open = false;
        // Leave the shared backend as a fresh session would find it.
        this.chain = this.chain.then(() => this.db.execProtocolRaw(message('Q', cstring('ROLLBACK; DEALLOCATE ALL; CLOSE ALL; RESET ALL')), { syncToFs: false })).catch(() => undefined);
      },
      cancel: async () => undefined,
    };
  }
}
