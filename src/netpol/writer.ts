import { closeSync, existsSync, fstatSync, openSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Writable } from 'node:stream';

/**
 * Where policy-action records go as NDJSON lines: the local `policy_action.log` rotated like GKE's node log
 * (seed 002: a new numbered file at 10 MB, five previous files kept), or a stream such as stdout.
 */
export interface RecordOutput {
  /** Set when the output can take no more (a closed pipe): the run stops reading flows. */
  readonly failure?: Error;
  write(line: string): void;
  /** Resolves when the buffered lines were handed to the OS (and a stream drained). */
  flush(): Promise<void>;
  close(): Promise<void>;
}

export const LOG_FILE_NAME = 'policy_action.log';
const BUFFER_BYTES = 256 * 1024;

/** A directory path (or one ending in `/`) means `DIR/policy_action.log`. */
export function logFilePath(path: string): string {
  if (path.endsWith('/') || (existsSync(path) && statSync(path).isDirectory())) return join(path, LOG_FILE_NAME);
  return path;
}

export class RotatingFileWriter implements RecordOutput {
  private fd: number;
  private size: number;
  // Lines are encoded straight into one buffer: no per-line byte count, no joined string, no copy per flush.
  private readonly buffer = Buffer.allocUnsafe(BUFFER_BYTES);
  private pendingBytes = 0;

  constructor(
    readonly path: string,
    private readonly maxBytes: number,
    private readonly keep: number,
  ) {
    this.fd = openSync(path, 'a');
    this.size = fstatSync(this.fd).size;
  }

  write(line: string): void {
    const worstCase = line.length * 3 + 1;
    // A record never straddles two files: the file rotates before the line that would take it past the limit.
    if (this.size + this.pendingBytes + worstCase > this.maxBytes && this.size + this.pendingBytes + Buffer.byteLength(line) + 1 > this.maxBytes && this.size + this.pendingBytes > 0) {
      this.flushSync();
      this.rotate();
    }
    if (this.pendingBytes + worstCase > this.buffer.length) {
      this.flushSync();
      if (worstCase > this.buffer.length) {
        this.writeAll(Buffer.from(line + '\n'));
        return;
      }
    }
    const written = this.buffer.write(line, this.pendingBytes, 'utf8');
    this.buffer[this.pendingBytes + written] = 10;
    this.pendingBytes += written + 1;
  }

  private writeAll(data: Buffer): void {
    let written = 0;
    while (written < data.length) written += writeSync(this.fd, data, written);
    this.size += data.length;
  }

  private flushSync(): void {
    if (this.pendingBytes === 0) return;
    this.writeAll(this.buffer.subarray(0, this.pendingBytes));
    this.pendingBytes = 0;
  }

  /** policy_action.log → .1 → .2 …; the oldest beyond `keep` is removed. */
  private rotate(): void {
    closeSync(this.fd);
    const numbered = (n: number): string => `${this.path}.${n}`;
    if (this.keep === 0) unlinkSync(this.path);
    else {
      if (existsSync(numbered(this.keep))) unlinkSync(numbered(this.keep));
      for (let n = this.keep - 1; n >= 1; n--) if (existsSync(numbered(n))) renameSync(numbered(n), numbered(n + 1));
      renameSync(this.path, numbered(1));
    }
    this.fd = openSync(this.path, 'a');
    this.size = 0;
  }

  async flush(): Promise<void> {
    this.flushSync();
  }

  async close(): Promise<void> {
    this.flushSync();
    closeSync(this.fd);
  }
}

/** Lines to a stream (stdout), in large chunks, waiting for `drain` so a slow reader bounds memory. */
export class StreamWriter implements RecordOutput {
  private pending: string[] = [];
  private pendingChars = 0;
  private backlog: Promise<void> | undefined;
  failure?: Error;

  constructor(private readonly stream: Writable) {
    // A reader that goes away (`| head`) ends the run quietly instead of crashing it.
    stream.on('error', (err) => {
      this.failure = err;
      this.pending = [];
    });
  }

  write(line: string): void {
    if (this.failure) return;
    this.pending.push(line);
    this.pendingChars += line.length + 1;
    if (this.pendingChars >= BUFFER_BYTES) this.push();
  }

  private push(): void {
    if (this.pending.length === 0 || this.failure) return;
    const chunk = this.pending.join('\n') + '\n';
    this.pending = [];
    this.pendingChars = 0;
    if (!this.stream.write(chunk) && !this.backlog)
      this.backlog = new Promise<void>((resolve) => {
        this.stream.once('drain', resolve);
        this.stream.once('error', resolve);
      }).finally(() => (this.backlog = undefined));
  }

  async flush(): Promise<void> {
    this.push();
    if (this.backlog) await this.backlog;
  }

  async close(): Promise<void> {
    await this.flush();
  }
}
