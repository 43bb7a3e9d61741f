import { randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import type { EgressNetworkType, EgressRecord } from '../model/index.ts';
import type { DenyReason } from './policy.ts';

/**
 * Connection accounting, kept apart from the protocols (as Smokescreen's conntrack does): one `Attempt` per client
 * connection collects who, where, bytes, outcome and why, and turns into exactly one seed-000 record when it ends.
 */

/** Why an attempt failed (traffic never left), in the spirit of Envoy's response flags. Closed set. */
export type FailureReason =
  | DenyReason
  | 'unauthenticated' // no or wrong proxy credentials (407 / RFC 1929 failure)
  | 'protocol_error' // not HTTP / SOCKS5, or malformed
  | 'header_too_large'
  | 'handshake_timeout' // the client did not finish its request in time (slowloris)
  | 'unsupported_request' // e.g. SOCKS5 BIND, https:// in absolute-form
  | 'connection_limit' // the source's connection limit was reached
  | 'dns_failure'
  | 'connect_refused'
  | 'connect_timeout'
  | 'connect_error' // unreachable and other socket errors while connecting
  | 'no_healthy_agent'
  | 'sni_missing'
  | 'sni_mismatch'
  | 'downstream_disconnect' // the client went away before traffic left
  | 'draining'; // the proxy was shutting down

/** How an egressed (successful) connection ended. */
export type CloseReason = 'completed' | 'idle_timeout' | 'draining' | 'client_reset' | 'destination_reset' | 'agent_rejected';

export type ProxyProtocol = 'connect' | 'http' | 'socks5';

export class Attempt {
  readonly connectionId = randomUUID();
  readonly startTime = new Date();
  private readonly startNs = process.hrtime.bigint();
  source: string | null = null;
  policy: string | null = null;
  networkType: EgressNetworkType = 'direct';
  networkResources: string[] = [];
  host: string | undefined;
  port = 0;
  address: string | undefined;
  requestSize = 0;
  responseSize = 0;
  /** Traffic left: the destination (or an agent) accepted the TCP connection. Seed 000's meaning of success. */
  egressed = false;
  failure: { reason: FailureReason; detail: string } | undefined;
  closeReason: CloseReason | undefined;
  /** For an agent that took the connection but could not reach the destination: what it reported. */
  agentFailure: FailureReason | undefined;
  closeDetail: string | undefined;
  private ended = false;

  constructor(
    public protocol: ProxyProtocol,
    readonly clientAddress: string,
    private readonly onEnd: (record: EgressRecord, attempt: Attempt) => void,
  ) {}

  /** Records the first failure only; later ones are consequences of it. No effect after traffic left. */
  fail(reason: FailureReason, detail: string): void {
    if (!this.egressed && !this.failure) this.failure = { reason, detail };
  }

  /** Emits the record, once. */
  end(endTime = new Date()): void {
    if (this.ended) return;
    this.ended = true;
    if (!this.egressed && !this.failure) this.failure = { reason: 'downstream_disconnect', detail: 'the client closed before traffic left' };
    this.onEnd(this.toRecord(endTime), this);
  }

  durationMs(): number {
    return Number(process.hrtime.bigint() - this.startNs) / 1e6;
  }

  private toRecord(endTime: Date): EgressRecord {
    const record: EgressRecord = {
      response_flags: this.egressed ? 'success' : 'failed',
      request_size: this.requestSize,
      response_size: this.responseSize,
      destination_port: this.port,
      duration_ms: Math.round(this.durationMs() * 1000) / 1000,
      metadata: {
        network_policy: this.policy,
        source: this.source,
        network_type: this.networkType,
        network_resources: this.networkResources,
      },
      protocol: this.protocol,
      connection_id: this.connectionId,
      start_time: this.startTime.toISOString(),
      end_time: endTime.toISOString(),
      client_address: this.clientAddress,
    };
    if (this.host !== undefined) record.destination_host = this.host;
    if (this.address !== undefined) record.destination_address = this.address;
    if (this.failure) {
      record.failure_reason = this.failure.reason;
      record.failure_detail = this.failure.detail;
    }
    if (this.closeReason) record.close_reason = this.closeReason;
    if (this.closeDetail && !this.failure) record.failure_detail = this.closeDetail;
    return record;
  }
}

/**
 * Relays bytes both ways until both directions are finished. Half-close is carried across (a client's FIN ends the
 * upstream's write side and the reverse direction keeps flowing), so both sockets must be created with
 * `allowHalfOpen`. Bytes are counted on the upstream socket from `upstreamBase` on, so what the record says is what
 * reached and came back from the destination through the tunnel.
 */
export function relay(
  client: Socket,
  upstream: Socket,
  attempt: Attempt,
  options: { idleMs: number; upstreamBase: { read: number; written: number } },
): Promise<void> {
  return new Promise((resolve) => {
    let open = 2;
    const settle = (): void => {
      if (--open > 0) return;
      attempt.requestSize = upstream.bytesWritten - options.upstreamBase.written;
      attempt.responseSize = upstream.bytesRead - options.upstreamBase.read;
      attempt.closeReason ??= 'completed';
      resolve();
    };
    client.once('close', settle);
    upstream.once('close', settle);
    client.on('error', () => {
      attempt.closeReason ??= 'client_reset';
      upstream.destroy();
    });
    upstream.on('error', () => {
      attempt.closeReason ??= 'destination_reset';
      client.destroy();
    });
    // A tunnel is idle when nothing moves either way; every relayed byte touches the client socket.
    client.setTimeout(options.idleMs, () => {
      attempt.closeReason ??= 'idle_timeout';
      client.destroy();
      upstream.destroy();
    });
    forward(client, upstream);
    forward(upstream, client);
  });
}

/**
 * One direction of the relay with backpressure: a full destination pauses the source until it drains, and the
 * source's FIN becomes the destination's FIN. Leaner than `stream.pipe`, which matters at thousands of tunnels/s.
 */
function forward(from: Socket, to: Socket): void {
  from.on('data', (chunk: Buffer) => {
    if (!to.write(chunk)) from.pause();
  });
  to.on('drain', () => from.resume());
  from.once('end', () => to.end());
  from.resume();
}
