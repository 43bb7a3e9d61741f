import { connect, type Socket } from 'node:net';

/**
 * Socket plumbing shared by the proxy and the agent: coarse deadlines, bounded handshake reads and dials with a
 * classified outcome.
 */

// ---- deadlines ----

/**
 * Something that must happen by `at` (ms since the epoch) unless cancelled. Every pending deadline of the process
 * is checked by one interval timer every TICK_MS, instead of a timer per socket (and `socket.setTimeout`, which is
 * re-armed on every read and write): at thousands of connections a second the per-socket timers were a measurable
 * part of the proxy's CPU per connection. A deadline fires up to TICK_MS late.
 */
export interface Deadline {
  at: number;
  expire(now: number): void;
}

const TICK_MS = 50;
const pendingDeadlines = new Set<Deadline>();
let sweeper: NodeJS.Timeout | undefined;
let clock = Date.now();

/** Date.now() as of the last sweep: good to TICK_MS, for stamping activity on every relayed chunk. */
export function coarseNow(): number {
  return clock;
}

export function watchDeadline(deadline: Deadline): void {
  pendingDeadlines.add(deadline);
  if (!sweeper) {
    clock = Date.now();
    // Unreferenced: a deadline never keeps the process alive by itself; the socket it guards does.
    sweeper = setInterval(sweep, TICK_MS).unref();
  }
}

export function clearDeadline(deadline: Deadline): void {
  pendingDeadlines.delete(deadline);
}

function sweep(): void {
  const now = (clock = Date.now());
  for (const deadline of pendingDeadlines) {
    if (deadline.at > now) continue;
    pendingDeadlines.delete(deadline);
    deadline.expire(now);
  }
  if (pendingDeadlines.size === 0) {
    clearInterval(sweeper);
    sweeper = undefined;
  }
}

// ---- handshake reads ----

export class HandshakeEnded extends Error {
  constructor(readonly why: 'timeout' | 'closed') {
    super(why === 'timeout' ? 'the client did not finish its handshake in time' : 'the client closed during the handshake');
    this.name = 'HandshakeEnded';
  }
}

type Parse = (buffer: Buffer) => { length: number } | undefined;
type Done = (err: Error | undefined, value: { length: number } | undefined) => void;

const EMPTY: Buffer = Buffer.alloc(0);

/*
 * Socket event handlers in this file are module-level functions that find their state through a symbol on the
 * socket (`this` is the socket), as Node's own net code does: no closures are made per connection, which kept
 * allocation, and with it garbage-collection pauses, down at thousands of connections a second.
 */
const kReader = Symbol('custos.handshakeReader');
type ReaderSocket = Socket & { [kReader]?: HandshakeReader };

function readerData(this: ReaderSocket, chunk: Buffer): void {
  this[kReader]!.received(chunk);
}

function readerEnd(this: ReaderSocket): void {
  this[kReader]!.finish(new HandshakeEnded('closed'), undefined);
}

/**
 * Buffers what a socket sends until `parse` recognises a complete message, then hands back the value and keeps
 * whatever arrived after it. The socket is paused on return, so no byte is lost before the caller attaches its
 * relay. `parse` throws for bytes that can never become valid; the deadline (`at`) bounds slow (slowloris) clients.
 */
export class HandshakeReader implements Deadline {
  private parse: Parse | undefined;
  private done: Done | undefined;

  constructor(
    private readonly socket: Socket,
    /** The handshake's deadline, ms since the epoch. */
    public at: number,
    /** Bytes already read from the socket by someone else (the native plane). */
    private buffer: Buffer = EMPTY,
  ) {}

  /** Calls `done` once with the parsed message or the error; at once when the bytes are already buffered. */
  next<T extends { length: number }>(parse: (buffer: Buffer) => T | undefined, done: (err: Error | undefined, value: T | undefined) => void): void {
    let ready: T | undefined;
    try {
      ready = parse(this.buffer);
    } catch (err) {
      done(err as Error, undefined);
      return;
    }
    if (ready !== undefined) {
      done(undefined, this.consume(ready));
      return;
    }
    this.parse = parse;
    this.done = done as Done;
    const socket = this.socket as ReaderSocket;
    socket[kReader] = this;
    socket.on('data', readerData).on('end', readerEnd).on('close', readerEnd).on('error', readerEnd);
    watchDeadline(this);
    socket.resume();
  }

  read<T extends { length: number }>(parse: (buffer: Buffer) => T | undefined): Promise<T> {
    return new Promise((resolve, reject) => this.next(parse, (err, value) => (err ? reject(err) : resolve(value!))));
  }

  /** Bytes received after the last parsed message (e.g. a pipelined request body or a TLS hello). */
  takeRest(): Buffer {
    const rest = this.buffer;
    this.buffer = EMPTY;
    return rest;
  }

  /** Looks at buffered bytes without consuming them (the SNI peek). */
  async peek<T>(parse: (buffer: Buffer) => T | undefined): Promise<T> {
    const found = await this.read((buffer) => {
      const value = parse(buffer);
      return value === undefined ? undefined : { value, length: 0 };
    });
    return found.value;
  }

  expire(): void {
    this.finish(new HandshakeEnded('timeout'), undefined);
  }

  /** @internal the socket's 'data' while waiting */
  received(chunk: Buffer): void {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    let value: { length: number } | undefined;
    try {
      value = this.parse!(this.buffer);
    } catch (err) {
      this.finish(err as Error, undefined);
      return;
    }
    if (value !== undefined) this.finish(undefined, value);
  }

  /** @internal */
  finish(err: Error | undefined, value: { length: number } | undefined): void {
    const done = this.done;
    if (!done) return;
    this.done = undefined;
    this.parse = undefined;
    clearDeadline(this);
    this.socket.off('data', readerData).off('end', readerEnd).off('close', readerEnd).off('error', readerEnd);
    this.socket.pause();
    if (err) done(err, undefined);
    else done(undefined, this.consume(value!));
  }

  private consume<T extends { length: number }>(value: T): T {
    this.buffer = value.length === this.buffer.length ? EMPTY : this.buffer.subarray(value.length);
    return value;
  }
}

// ---- dials ----

export type DialFailure = 'connect_refused' | 'connect_timeout' | 'connect_error';

export class DialError extends Error {
  constructor(
    readonly reason: DialFailure,
    message: string,
  ) {
    super(message);
    this.name = 'DialError';
  }
}

/** For sockets whose errors surface as 'close' to whoever relays: an unheard 'error' event would end the process. */
export function ignore(): void {}

/**
 * Opens a TCP connection to an IP literal (never a name: the caller resolved and checked it) and calls `done` once,
 * with the connected socket or a classified `DialError`. The socket reads into pooled buffers (see "dialled reads").
 */
export function dialThen(address: string, port: number, timeoutMs: number, done: (err: DialError | undefined, socket: Socket | undefined) => void): void {
  const first = takeReadBuffer();
  // connect() creates the handle, which takes its first read buffer from nextReadBytes() there and then.
  nextBytes = first.bytes;
  const socket = connect({ host: address, port, allowHalfOpen: true, noDelay: true, onread: DIALLED_READS }) as DialSocket;
  socket[kReadBuffer] = first;
  socket[kDial] = new Dial(socket, address, port, Date.now() + timeoutMs, timeoutMs, done);
  socket.once('connect', dialConnected).once('error', dialFailed).once('close', dialledClosed);
  watchDeadline(socket[kDial]);
}

// ---- dialled reads ----

/*
 * A dialled (upstream) socket reads into a 64 KiB buffer of its own instead of Node's default of a fresh allocation
 * per read: in bulk transfers those allocations made glibc shrink and re-grow its heap around every read (thousands
 * of brk calls and page faults per GiB), the largest part of the relay's system time. A buffer is read into again
 * only once the write that carried its bytes on has completed (`written`): until then the socket reads into another
 * one from a process-wide free list, and the buffer goes back to that list when its write completes or, for the one
 * a socket holds for its next read, when the socket closes. So an open tunnel holds one buffer (two or three while
 * its client drains slowly), and the free list keeps what closed tunnels gave back, up to FREE_READ_BUFFERS.
 */
const READ_BYTES = 64 * 1024;
const FREE_READ_BUFFERS = 128;

class ReadBuffer {
  readonly bytes = Buffer.allocUnsafeSlow(READ_BYTES);
  /** A write still holds these bytes (the kernel may not have copied them yet). */
  inFlight = false;
  /** A socket's next read lands here. */
  held = true;
  /** The write callback for the bytes read into this buffer: made once per buffer, not per write. */
  readonly written = (): void => {
    this.inFlight = false;
    if (!this.held) giveBack(this);
  };
}

const freeReadBuffers: ReadBuffer[] = [];

function takeReadBuffer(): ReadBuffer {
  const buffer = freeReadBuffers.pop();
  if (!buffer) return new ReadBuffer();
  buffer.held = true;
  return buffer;
}

function giveBack(buffer: ReadBuffer): void {
  if (freeReadBuffers.length < FREE_READ_BUFFERS) freeReadBuffers.push(buffer);
}

/**
 * Set by whoever relays a dialled socket (conn.ts): gets each read's bytes, which stay valid until `written` is called
 * (pass it as the callback of the write that carries them on). Before it is set, reads are copied and pushed to the
 * socket's readable side, so 'data', pause() and resume() work as on any socket (the agent's answer is read so).
 */
export const kRelayRead = Symbol('custos.relayRead');
export type RelayRead = (this: Socket, bytes: Buffer, written: () => void) => void;

const kReadBuffer = Symbol('custos.readBuffer');
type DialledSocket = Socket & { [kReadBuffer]: ReadBuffer; [kRelayRead]?: RelayRead };

/**
 * Where the socket that just read reads next. Node calls the buffer function right after each read callback (and
 * once when connect() creates the handle), with no socket to hand, so the callback leaves the answer here.
 */
let nextBytes: Buffer = Buffer.alloc(0);

function nextReadBytes(): Buffer {
  return nextBytes;
}

function dialledRead(this: DialledSocket, nread: number, bytes: Uint8Array): boolean {
  const relayRead = this[kRelayRead];
  const current = this[kReadBuffer];
  if (relayRead === undefined) {
    nextBytes = current.bytes;
    return this.push(Buffer.from(bytes.subarray(0, nread)));
  }
  current.inFlight = true;
  current.held = false;
  const next = takeReadBuffer();
  this[kReadBuffer] = next;
  nextBytes = next.bytes;
  relayRead.call(this, current.bytes.subarray(0, nread), current.written);
  return true;
}

function dialledClosed(this: DialledSocket): void {
  const current = this[kReadBuffer];
  current.held = false;
  if (!current.inFlight) giveBack(current);
}

const DIALLED_READS = { buffer: nextReadBytes, callback: dialledRead };

const kDial = Symbol('custos.dial');
type DialSocket = DialledSocket & { [kDial]: Dial };

class Dial implements Deadline {
  constructor(
    private readonly socket: Socket,
    private readonly address: string,
    private readonly port: number,
    public at: number,
    private readonly timeoutMs: number,
    private readonly done: (err: DialError | undefined, socket: Socket | undefined) => void,
  ) {}

  expire(): void {
    this.fail(dialFailure(CONNECT_DEADLINE, this.address, this.port, this.timeoutMs));
  }

  failed(err: NodeJS.ErrnoException): void {
    this.fail(dialFailure(err.code ?? err.message, this.address, this.port, this.timeoutMs));
  }

  connected(): void {
    clearDeadline(this);
    this.socket.off('error', dialFailed).on('error', ignore);
    this.done(undefined, this.socket);
  }

  private fail(err: DialError): void {
    clearDeadline(this);
    this.socket.off('connect', dialConnected).off('error', dialFailed).on('error', ignore).destroy();
    this.done(err, undefined);
  }
}

function dialConnected(this: DialSocket): void {
  this[kDial].connected();
}

function dialFailed(this: DialSocket, err: NodeJS.ErrnoException): void {
  this[kDial].failed(err);
}

/** The code of a dial that hit the proxy's own connect timeout (the others are errno codes). */
export const CONNECT_DEADLINE = 'CONNECT_DEADLINE';

/** A failed dial classified by its errno code (or CONNECT_DEADLINE), worded for the record. */
export function dialFailure(code: string, address: string, port: number, timeoutMs: number): DialError {
  if (code === CONNECT_DEADLINE) return new DialError('connect_timeout', `no answer from ${address} port ${port} within ${timeoutMs} ms`);
  const reason = code === 'ECONNREFUSED' ? 'connect_refused' : code === 'ETIMEDOUT' ? 'connect_timeout' : 'connect_error';
  return new DialError(reason, `${address} port ${port}: ${code}`);
}

export function dial(address: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => dialThen(address, port, timeoutMs, (err, socket) => (err ? reject(err) : resolve(socket!))));
}

/** `[v6]:port` or `v4:port`, as the client and agents want to see an address. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
