import { randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import type { EgressNetworkType, EgressRecord } from '../model/index.ts';
import { clearDeadline, coarseNow, kRelayRead, watchDeadline, type Deadline, type RelayRead } from './io.ts';
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
  /** Wall clock for the record's start_time; the duration comes from the monotonic clock. */
  readonly startMs: number;
  private readonly startMono: number;
  source: string | null = null;
  policy: string | null = null;
  networkType: EgressNetworkType = 'direct';
  networkResources: string[] = NO_RESOURCES;
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
    /** How long ago the connection was accepted (the native plane accepts before this object exists). */
    ageMs: number,
    private readonly onEnd: (record: EgressRecord, attempt: Attempt) => void,
  ) {
    this.startMs = Date.now() - ageMs;
    this.startMono = performance.now() - ageMs;
  }

  /** Records the first failure only; later ones are consequences of it. No effect after traffic left. */
  fail(reason: FailureReason, detail: string): void {
    if (!this.egressed && !this.failure) this.failure = { reason, detail };
  }

  /** Emits the record, once. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (!this.egressed && !this.failure) this.failure = { reason: 'downstream_disconnect', detail: 'the client closed before traffic left' };
    this.onEnd(this.toRecord(), this);
  }

  durationMs(): number {
    return performance.now() - this.startMono;
  }

  private toRecord(): EgressRecord {
    const durationMs = this.durationMs();
    const record: EgressRecord = {
      response_flags: this.egressed ? 'success' : 'failed',
      request_size: this.requestSize,
      response_size: this.responseSize,
      destination_port: this.port,
      duration_ms: Math.round(durationMs * 1000) / 1000,
      metadata: {
        network_policy: this.policy,
        source: this.source,
        network_type: this.networkType,
        network_resources: this.networkResources,
      },
      protocol: this.protocol,
      connection_id: this.connectionId,
      start_time: new Date(this.startMs).toISOString(),
      end_time: new Date(this.startMs + Math.round(durationMs)).toISOString(),
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

/** Shared by every direct attempt (never mutated: agent attempts assign their own list). */
const NO_RESOURCES: string[] = [];

/**
 * Relays bytes both ways until both directions are finished, then calls `done`. Half-close is carried across (a
 * client's FIN ends the upstream's write side and the reverse direction keeps flowing), so both sockets must be
 * created with `allowHalfOpen`. Bytes are counted on the upstream socket from `upstreamBase` on, so what the record
 * says is what reached and came back from the destination through the tunnel. Each direction is a 'data' handler
 * writing to the other socket, pausing on backpressure until 'drain': leaner than `stream.pipe`, which matters at
 * thousands of tunnels/s. A dialled upstream hands its reads to `relayRead` instead, in buffers it reuses once the
 * client write carrying them completes (io.ts); its 'data' then only carries what it read before the relay began.
 * A tunnel is idle when nothing moves either way for `idleMs` (checked by the coarse sweep).
 */
export function relay(
  client: Socket,
  upstream: Socket,
  attempt: Attempt,
  options: { idleMs: number; upstreamBase: { read: number; written: number } },
  done: () => void,
): void {
  new Tunnel(client, upstream, attempt, options.idleMs, options.upstreamBase, done).start();
}

const kTunnel = Symbol('custos.tunnel');
type TunnelSocket = Socket & { [kTunnel]: Tunnel; [kRelayRead]?: RelayRead };

/** Both sockets point at their tunnel; the handlers below are shared by every tunnel (see io.ts on why). */
class Tunnel implements Deadline {
  at: number;
  lastActive = coarseNow();
  private open = 2;

  constructor(
    readonly client: Socket,
    readonly upstream: Socket,
    readonly attempt: Attempt,
    private readonly idleMs: number,
    private readonly base: { read: number; written: number },
    private readonly done: () => void,
  ) {
    this.at = Date.now() + idleMs;
  }

  start(): void {
    const client = this.client as TunnelSocket;
    const upstream = this.upstream as TunnelSocket;
    client[kTunnel] = this;
    upstream[kTunnel] = this;
    upstream[kRelayRead] = relayRead;
    client.on('data', relayData).on('end', relayEnd).on('close', relayClose).on('error', relayError);
    upstream.on('data', relayData).on('end', relayEnd).on('close', relayClose).on('error', relayError);
    watchDeadline(this);
    // A FIN that arrived during the handshake or the dial was emitted as 'end' before these handlers existed; carried
    // across only now, or the other side would wait for it until the idle timeout.
    if (client.readableEnded) upstream.end();
    if (upstream.readableEnded) client.end();
    client.resume();
    upstream.resume();
  }

  peer(socket: Socket): Socket {
    return socket === this.client ? this.upstream : this.client;
  }

  expire(now: number): void {
    if (now - this.lastActive < this.idleMs) {
      this.at = this.lastActive + this.idleMs;
      watchDeadline(this);
      return;
    }
    this.attempt.closeReason ??= 'idle_timeout';
    this.client.destroy();
    this.upstream.destroy();
  }

  settle(): void {
    if (--this.open > 0) return;
    clearDeadline(this);
    this.attempt.requestSize = this.upstream.bytesWritten - this.base.written;
    this.attempt.responseSize = this.upstream.bytesRead - this.base.read;
    this.attempt.closeReason ??= 'completed';
    this.done();
  }
}

/** One direction: write to the other socket; a full destination pauses this one until it drains. */
function relayData(this: TunnelSocket, chunk: Buffer): void {
  const tunnel = this[kTunnel];
  tunnel.lastActive = coarseNow();
  const to = tunnel.peer(this);
  if (!to.write(chunk)) {
    this.pause();
    to.once('drain', resumePeer);
  }
}

/** The upstream's reads into reused buffers: `written` frees the buffer once the client write has completed. */
function relayRead(this: Socket, bytes: Buffer, written: () => void): void {
  const tunnel = (this as TunnelSocket)[kTunnel];
  tunnel.lastActive = coarseNow();
  const client = tunnel.client;
  if (!client.write(bytes, written)) {
    this.pause();
    client.once('drain', resumePeer);
  }
}

function resumePeer(this: TunnelSocket): void {
  this[kTunnel].peer(this).resume();
}

/** A FIN is carried across as a FIN: the other direction keeps flowing. */
function relayEnd(this: TunnelSocket): void {
  this[kTunnel].peer(this).end();
}

function relayError(this: TunnelSocket): void {
  const tunnel = this[kTunnel];
  tunnel.attempt.closeReason ??= this === tunnel.client ? 'client_reset' : 'destination_reset';
  tunnel.peer(this).destroy();
}

function relayClose(this: TunnelSocket): void {
  this[kTunnel].settle();
}
