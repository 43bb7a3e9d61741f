import { randomUUID } from 'node:crypto';
import type { LogEntryInput } from '../model/index.ts';
import { componentLogger } from '../telemetry/index.ts';

/**
 * Where producers (netpol, egress, dataproxy) hand their entries: the store over HTTP, or the in-process ingest
 * service when they run inside `custos serve`. `write` resolves once the entries are durable.
 */
export interface EntrySink {
  write(entries: LogEntryInput[]): Promise<void>;
  close(): Promise<void>;
}

export class IngestHttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
  ) {
    super(`store answered ${status}: ${body.slice(0, 500)}`);
  }
}

/** Writes to `POST /v1/entries:write` as NDJSON; retries transient failures with the same insertIds (deduped). */
export class HttpEntrySink implements EntrySink {
  private readonly url: string;
  constructor(
    server: string,
    private readonly token: string | undefined,
    private readonly options: { attempts?: number; organization?: string } = {},
  ) {
    const url = new URL('/v1/entries:write', server);
    if (options.organization) url.searchParams.set('organization', options.organization);
    this.url = url.toString();
  }

  async write(entries: LogEntryInput[]): Promise<void> {
    if (entries.length === 0) return;
    // insertIds are fixed before the first attempt, so a retry of a batch the server did store is not stored twice.
    const body = entries.map((e) => JSON.stringify(e.insertId ? e : { ...e, insertId: randomUUID() })).join('\n') + '\n';
    const attempts = this.options.attempts ?? 5;
    for (let attempt = 1; ; attempt++) {
      try {
        const res = await fetch(this.url, {
          method: 'POST',
          headers: { 'content-type': 'application/x-ndjson', ...(this.token ? { authorization: `Bearer ${this.token}` } : {}) },
          body,
        });
        if (res.ok) {
          await res.arrayBuffer();
          return;
        }
        const text = await res.text();
        if (res.status < 500 || attempt >= attempts) throw new IngestHttpError(res.status, text);
      } catch (err) {
        if (err instanceof IngestHttpError || attempt >= attempts) throw err;
      }
      await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** attempt)));
    }
  }

  async close(): Promise<void> {}
}

/**
 * Buffers entries from a hot path (one per connection or flow) and writes them in batches. `add` never blocks;
 * when the store is slower than the producer the buffer is bounded and overflow is counted, not hidden.
 */
export class BatchingSink {
  private buffer: LogEntryInput[] = [];
  private timer: NodeJS.Timeout | undefined;
  private inflight: Promise<void> = Promise.resolve();
  dropped = 0;
  failed = 0;
  private readonly log = componentLogger('ingest-client');

  constructor(
    private readonly sink: EntrySink,
    private readonly options: { maxBatch?: number; flushMs?: number; maxBuffered?: number } = {},
  ) {}

  add(entry: LogEntryInput): void {
    if (this.buffer.length >= (this.options.maxBuffered ?? 100_000)) {
      this.dropped++;
      return;
    }
    this.buffer.push(entry);
    if (this.buffer.length >= (this.options.maxBatch ?? 1000)) void this.flush();
    else this.timer ??= setTimeout(() => void this.flush(), this.options.flushMs ?? 200);
  }

  /** Writes everything buffered so far; resolves when it is durable (or its failure was logged). */
  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.buffer;
    this.buffer = [];
    this.inflight = this.inflight.then(async () => {
      if (batch.length === 0) return;
      try {
        await this.sink.write(batch);
      } catch (err) {
        this.failed += batch.length;
        this.log.error({ err, entries: batch.length }, 'could not write entries to the store');
      }
    });
    return this.inflight;
  }

  async close(): Promise<void> {
    await this.flush();
    await this.sink.close();
  }
}

/** The token a client uses: `--token`, else `CUSTOS_TOKEN`. */
export function clientToken(flag?: string): string | undefined {
  return flag ?? process.env['CUSTOS_TOKEN'] ?? undefined;
}
