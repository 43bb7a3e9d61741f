import { connect, type Socket } from 'node:net';

/** Socket plumbing shared by the proxy and the agent: bounded handshake reads and dials with a classified outcome. */

export class HandshakeEnded extends Error {
  constructor(readonly why: 'timeout' | 'closed') {
    super(why === 'timeout' ? 'the client did not finish its handshake in time' : 'the client closed during the handshake');
    this.name = 'HandshakeEnded';
  }
}

/**
 * Buffers what a socket sends until `parse` recognises a complete message, then hands back the value and whatever
 * arrived after it. The socket is paused on return, so no byte is lost before the caller attaches its relay.
 * `parse` throws for bytes that can never become valid; `deadline` bounds slow (slowloris) clients.
 */
export class HandshakeReader {
  private buffer: Buffer = Buffer.alloc(0);

  constructor(
    private readonly socket: Socket,
    private readonly deadline: number,
  ) {}

  async read<T extends { length: number }>(parse: (buffer: Buffer) => T | undefined): Promise<T> {
    const ready = parse(this.buffer);
    if (ready !== undefined) return this.consume(ready);
    return new Promise<T>((resolve, reject) => {
      const remaining = this.deadline - Date.now();
      const timer = setTimeout(() => finish(new HandshakeEnded('timeout')), Math.max(0, remaining));
      const onData = (chunk: Buffer): void => {
        this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
        try {
          const value = parse(this.buffer);
          if (value !== undefined) finish(undefined, value);
        } catch (err) {
          finish(err as Error);
        }
      };
      const onEnd = (): void => finish(new HandshakeEnded('closed'));
      const finish = (err: Error | undefined, value?: T): void => {
        clearTimeout(timer);
        this.socket.off('data', onData).off('end', onEnd).off('close', onEnd).off('error', onEnd);
        this.socket.pause();
        if (err) reject(err);
        else resolve(this.consume(value!));
      };
      this.socket.on('data', onData).once('end', onEnd).once('close', onEnd).once('error', onEnd);
      this.socket.resume();
    });
  }

  /** Bytes received after the last parsed message (e.g. a pipelined request body or a TLS hello). */
  takeRest(): Buffer {
    const rest = this.buffer;
    this.buffer = Buffer.alloc(0);
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

  private consume<T extends { length: number }>(value: T): T {
    this.buffer = this.buffer.subarray(value.length);
    return value;
  }
}

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

/** Opens a TCP connection to an IP literal (never a name: the caller resolved and checked it). */
export function dial(address: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: address, port, allowHalfOpen: true, noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new DialError('connect_timeout', `no answer from ${address} port ${port} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      // Later errors surface as 'close' to whoever relays; an unheard 'error' event would end the process.
      socket.on('error', () => {});
      resolve(socket);
    });
    const onError = (err: NodeJS.ErrnoException): void => {
      clearTimeout(timer);
      socket.destroy();
      const reason = err.code === 'ECONNREFUSED' ? 'connect_refused' : err.code === 'ETIMEDOUT' ? 'connect_timeout' : 'connect_error';
      reject(new DialError(reason, `${address} port ${port}: ${err.code ?? err.message}`));
    };
    socket.once('error', onError);
  });
}

/** `[v6]:port` or `v4:port`, as the client and agents want to see an address. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
