import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import type { EgressRecord } from '../model/index.ts';
import { componentLogger, splitHostPort } from '../telemetry/index.ts';
import { AgentPool, AGENT_FAILURE_HEADER } from './agent.ts';
import type { AgentRef, EgressConfig, EgressPolicy, EgressSource } from './config.ts';
import { Attempt, relay, type FailureReason, type ProxyProtocol } from './conn.ts';
import { dial, dialFailure, dialThen, DialError, formatHostPort, HandshakeEnded, HandshakeReader, ignore, watchDeadline } from './io.ts';
import { connectionClosed, connectionOpened, countPath, countRecord } from './metrics.ts';
import { plane, type PlaneCloseReason, type PlaneHandlers, type PlaneListener } from './plane.ts';
import { candidatePolicies, decide, ipLiteral, sniAllowed, sourcePolicies, type Decision } from './policy.ts';
import { createResolver, ResolveError, type Resolver } from './resolver.ts';
import {
  basicCredentials,
  headerValue,
  parseAbsoluteTarget,
  parseAuthority,
  parseClientHelloSni,
  parseRequestHead,
  parseSocksGreeting,
  parseSocksRequest,
  parseSocksUserPass,
  ProtocolError,
  SOCKS,
  socksReply,
  type RequestHead,
} from './wire.ts';

/**
 * The proxy's protocols: HTTP CONNECT and absolute-form forward proxying on HTTP listeners, SOCKS5 on SOCKS
 * listeners. Each connection is one `Attempt`: identify the source, decide with `policy.ts`, resolve once, dial
 * exactly a checked address (directly or through an agent), then relay with accounting from `conn.ts`.
 *
 * Where the native plane is built (plane.ts), HTTP listeners are the plane's: a CONNECT or a forward-proxy request by
 * a known source whose candidate policies are all direct without the SNI guard is decided here and relayed by the
 * plane (the fast path, `planeFastPath`); every other connection comes back as a Node socket and takes the socket
 * path below.
 */

export interface EgressProxyOptions {
  config: EgressConfig;
  /** Called once per attempt, when it ends. */
  onRecord: (record: EgressRecord) => void;
  /** Replaces the resolver built from the config (tests). */
  resolver?: Resolver;
}

type ListenerKind = 'http' | 'socks5';

/** A fast-path tunnel's attempt and, once a decision allowed it, the dial: checked addresses, the one tried. */
interface PlaneTunnel {
  attempt: Attempt;
  dialing?: { addresses: string[]; port: number; index: number; /** the source's plane number */ source: number; preamble?: Buffer };
}

/** A request head the native plane read, as the fast path needs it. */
interface PlaneHead {
  listener: number;
  tunnel: number;
  peer: string;
  target: string;
  authorization: string | undefined;
  ageMs: number;
  /** The listener's source, when it is a source's dedicated listener. */
  dedicatedSource: string | undefined;
}

interface Listener {
  kind: ListenerKind;
  address: string;
  /** A dedicated listener's source id. */
  sourceId: string | undefined;
  /** A Node server, or the native plane's listener. */
  server: Server | PlaneListener;
  bound: string;
}

interface Upstream {
  socket: Socket;
  base: { read: number; written: number };
  /** Bytes the agent sent after its CONNECT answer, owed to the client. */
  early: Buffer;
}

/** An upstream ready to relay, and whether the client was already told the tunnel is up. */
type Connected = Upstream & { replied: boolean };

const NO_BYTES = { read: 0, written: 0 };
const EMPTY: Buffer = Buffer.alloc(0);
const CONNECT_ESTABLISHED = Buffer.from('HTTP/1.1 200 Connection Established\r\n\r\n');

/** How a failure is told to the client: HTTP status, SOCKS5 reply code. */
const FAILURE_REPLIES: Record<FailureReason, [status: string, socks: number]> = {
  no_matching_policy: ['403 Forbidden', SOCKS.reply.notAllowed],
  destination_address_refused: ['403 Forbidden', SOCKS.reply.notAllowed],
  unauthenticated: ['407 Proxy Authentication Required', SOCKS.reply.notAllowed],
  protocol_error: ['400 Bad Request', SOCKS.reply.generalFailure],
  header_too_large: ['431 Request Header Fields Too Large', SOCKS.reply.generalFailure],
  handshake_timeout: ['408 Request Timeout', SOCKS.reply.generalFailure],
  unsupported_request: ['501 Not Implemented', SOCKS.reply.commandNotSupported],
  connection_limit: ['429 Too Many Requests', SOCKS.reply.generalFailure],
  dns_failure: ['502 Bad Gateway', SOCKS.reply.hostUnreachable],
  connect_refused: ['502 Bad Gateway', SOCKS.reply.connectionRefused],
  connect_timeout: ['504 Gateway Timeout', SOCKS.reply.ttlExpired],
  connect_error: ['502 Bad Gateway', SOCKS.reply.hostUnreachable],
  no_healthy_agent: ['502 Bad Gateway', SOCKS.reply.networkUnreachable],
  sni_missing: ['403 Forbidden', SOCKS.reply.notAllowed],
  sni_mismatch: ['403 Forbidden', SOCKS.reply.notAllowed],
  downstream_disconnect: ['400 Bad Request', SOCKS.reply.generalFailure],
  draining: ['503 Service Unavailable', SOCKS.reply.generalFailure],
};

const HOP_BY_HOP = new Set(['proxy-authorization', 'proxy-connection', 'connection', 'keep-alive', 'te', 'trailer', 'upgrade']);

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

export class EgressProxy {
  private config: EgressConfig;
  private resolver: Resolver;
  private readonly agents = new AgentPool();
  private readonly listeners = new Map<string, Listener>();
  private readonly open = new Map<Socket, { attempt: Attempt; upstream?: Socket }>();
  /** Tunnels on the native plane's fast path, by tunnel id; each leaves when its attempt ends. */
  private readonly planeTunnels = new Map<number, PlaneTunnel>();
  private readonly planeHandlers: (sourceId: string | undefined) => PlaneHandlers = (sourceId) => ({
    connect: (listener, tunnel, peer, target, authorization, ageMs, verdict) =>
      verdict ? this.onPlaneVerdict(tunnel, peer, ageMs, verdict) : this.onPlaneConnect({ listener, tunnel, peer, target, authorization, ageMs, dedicatedSource: sourceId }),
    request: (listener, tunnel, peer, head, ageMs) => this.onPlaneRequest({ listener, tunnel, peer, head, ageMs, dedicatedSource: sourceId }),
    handoff: (socket, bytes, ageMs) => this.handleHttp(socket, sourceId, bytes, ageMs),
    dialFailed: (tunnel, code) => this.planeDialFailed(tunnel, code),
    closed: (tunnel, toUpstream, fromUpstream, reason, connected) => this.planeClosed(tunnel, toUpstream, fromUpstream, reason, connected),
  });
  /** Decisions the plane repeats by itself (plane.remember), by verdict number; bounded, kept across reloads. */
  private readonly verdicts = new Map<number, { source: EgressSource; policy: EgressPolicy; host: string; port: number; address: string }>();
  private nextVerdict = 1;
  /** The plane's process-wide number for each source id (its per-source connection count). */
  private readonly sourceNumbers = new Map<string, number>();
  private readonly perSource = new Map<string, number>();
  private draining = false;
  private readonly passwordDigests = new WeakMap<EgressSource, Buffer>();
  /** Proxy-Authorization values that verified, and their source; emptied on reload. */
  private verified = new Map<string, EgressSource>();
  /** Decisions for IP-literal destinations, a pure function of the config; emptied on reload. */
  private decisions = new Map<string, Decision>();
  private readonly log = componentLogger('egress');

  constructor(private readonly options: EgressProxyOptions) {
    this.config = options.config;
    this.resolver = options.resolver ?? createResolver(options.config.resolver);
  }

  async start(): Promise<void> {
    this.agents.sync(this.config);
    await this.syncListeners();
  }

  /** Adopts a new config: new connections use it, open tunnels keep the decision made when they started. */
  async reload(config: EgressConfig): Promise<void> {
    const previous = this.config;
    this.config = config;
    try {
      await this.syncListeners();
    } catch (err) {
      // A listener that cannot open (address in use) rejects the whole config; the previous one stays in force.
      this.config = previous;
      await this.syncListeners().catch(() => undefined);
      throw err;
    }
    if (!this.options.resolver) this.resolver = createResolver(config.resolver);
    this.verified = new Map();
    this.decisions = new Map();
    plane?.forget();
    this.agents.sync(config);
    this.log.info({ policies: config.policies.length, sources: config.sources.length }, 'egress config applied');
  }

  /** Bound addresses: `http`, `socks5`, and `http:<source>` / `socks5:<source>` for dedicated listeners. */
  addresses(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const l of this.listeners.values()) out[l.sourceId ? `${l.kind}:${l.sourceId}` : l.kind] = l.bound;
    return out;
  }

  openConnections(): number {
    return this.open.size + this.planeTunnels.size;
  }

  agentHealth(): ReturnType<AgentPool['health']> {
    return this.agents.health();
  }

  /** Waits for one round of agent health checks. */
  checkAgents(): Promise<void> {
    return this.agents.checkAll();
  }

  /** Stops accepting, lets open connections finish for up to `timeoutMs`, then closes the rest. */
  async drain(timeoutMs = this.config.timeouts.drainMs): Promise<void> {
    this.draining = true;
    // close() stops accepting at once; its callback would wait for every open connection, which the deadline governs.
    for (const listener of this.listeners.values()) listener.server.close();
    this.listeners.clear();
    this.agents.close();
    const deadline = Date.now() + timeoutMs;
    while (this.openConnections() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const [client, { attempt, upstream }] of this.open) {
      attempt.closeReason ??= 'draining';
      attempt.fail('draining', 'the proxy shut down');
      client.destroy();
      upstream?.destroy();
    }
    // Each aborted tunnel's close event ends its attempt (planeClosed). A tunnel the plane dialled on a verdict just
    // before its listener closed is announced late, so the plane's tunnels are swept until none is left.
    const aborted = new Set<number>();
    for (;;) {
      for (const tunnel of this.planeTunnels.keys()) {
        if (aborted.has(tunnel)) continue;
        aborted.add(tunnel);
        plane!.abort(tunnel);
      }
      if (this.openConnections() === 0) break;
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  close(): Promise<void> {
    return this.drain(0);
  }

  // ---- listeners ----

  private wantedListeners(): { key: string; kind: ListenerKind; address: string; sourceId?: string }[] {
    const wanted: { key: string; kind: ListenerKind; address: string; sourceId?: string }[] = [
      { key: `http|${this.config.listen}|`, kind: 'http', address: this.config.listen },
    ];
    if (this.config.socks5) wanted.push({ key: `socks5|${this.config.socks5}|`, kind: 'socks5', address: this.config.socks5 });
    for (const source of this.config.sources) {
      if (source.listen) wanted.push({ key: `http|${source.listen}|${source.id}`, kind: 'http', address: source.listen, sourceId: source.id });
      if (source.socks5) wanted.push({ key: `socks5|${source.socks5}|${source.id}`, kind: 'socks5', address: source.socks5, sourceId: source.id });
    }
    return wanted;
  }

  private async syncListeners(): Promise<void> {
    if (this.draining) return;
    const wanted = this.wantedListeners();
    const keys = new Set(wanted.map((w) => w.key));
    for (const [key, listener] of this.listeners) {
      if (keys.has(key)) continue;
      // Closing a server stops new connections only; tunnels accepted on it stay open.
      listener.server.close();
      this.listeners.delete(key);
    }
    for (const w of wanted) {
      const existing = this.listeners.get(w.key)?.server;
      if (existing && 'configure' in existing) existing.configure(this.config.limits.maxHeaderBytes, this.config.timeouts.handshakeMs);
      if (existing) continue;
      if (w.kind === 'http' && plane) {
        const { host, port } = splitHostPort(w.address);
        const listener = await plane.listen(host, port, this.config.limits.maxHeaderBytes, this.config.timeouts.handshakeMs, this.planeHandlers(w.sourceId));
        const bound = formatHostPort(listener.bound.address, listener.bound.port);
        this.listeners.set(w.key, { kind: w.kind, address: w.address, sourceId: w.sourceId, server: listener, bound });
        this.log.info({ kind: w.kind, address: bound, source: w.sourceId, plane: 'native' }, 'egress listener open');
        continue;
      }
      const server = createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true }, (socket) => {
        try {
          if (w.kind === 'http') this.handleHttp(socket, w.sourceId);
          else this.handleSocks(socket, w.sourceId).catch((err: Error) => this.abandon(socket, err));
        } catch (err) {
          this.abandon(socket, err as Error);
        }
      });
      const { host, port } = splitHostPort(w.address);
      await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, host, () => resolve()));
      server.on('error', (err) => this.log.error({ err, address: w.address }, 'listener error'));
      const bound = server.address() as { address: string; port: number };
      this.listeners.set(w.key, { kind: w.kind, address: w.address, sourceId: w.sourceId, server, bound: formatHostPort(bound.address, bound.port) });
      this.log.info({ kind: w.kind, address: formatHostPort(bound.address, bound.port), source: w.sourceId }, 'egress listener open');
    }
  }

  /** A handler bug must cost one connection (with its record), never the process. */
  private abandon(client: Socket, err: Error): void {
    this.log.error({ err }, 'egress connection handler failed');
    const entry = this.open.get(client);
    entry?.attempt.fail('protocol_error', `internal error: ${err.message}`);
    entry?.attempt.end();
    entry?.upstream?.destroy();
    client.destroy();
  }

  // ---- one connection ----

  private begin(client: Socket, protocol: ProxyProtocol, ageMs = 0): Attempt {
    client.on('error', ignore);
    countPath('socket');
    const attempt = this.newAttempt(protocol, formatHostPort(client.remoteAddress ?? '', client.remotePort ?? 0), ageMs, () => this.open.delete(client));
    this.open.set(client, { attempt });
    return attempt;
  }

  /** An attempt whose end releases its source's slot, counts and emits the record, after `forget`. */
  private newAttempt(protocol: ProxyProtocol, clientAddress: string, ageMs: number, forget: () => void): Attempt {
    return new Attempt(protocol, clientAddress, ageMs, (record, a) => {
      forget();
      if (a.source !== null) {
        const left = (this.perSource.get(a.source) ?? 1) - 1;
        if (left > 0) this.perSource.set(a.source, left);
        else this.perSource.delete(a.source);
        connectionClosed(a.source);
      }
      countRecord(record);
      try {
        this.options.onRecord(record);
      } catch (err) {
        this.log.error({ err }, 'record writer failed');
      }
    });
  }

  /**
   * Claims a connection slot for the source (released when the attempt ends); false when over its limit. `enforce`
   * false counts a connection the plane already admitted against the same limit.
   */
  private admit(attempt: Attempt, source: EgressSource, enforce = true): boolean {
    const used = this.perSource.get(source.id) ?? 0;
    attempt.source = source.id;
    this.perSource.set(source.id, used + 1);
    connectionOpened(source.id);
    if (!enforce || used < source.maxConnections) return true;
    attempt.fail('connection_limit', `source ${source.id} already has ${used} connections (limit ${source.maxConnections})`);
    return false;
  }

  private sourceByCredentials(username: string, password: string): EgressSource | undefined {
    const source = this.config.sources.find((s) => s.credentials?.username === username);
    if (!source?.credentials) return undefined;
    // Digests make the comparison constant-time whatever the lengths; the configured side is computed once.
    let expected = this.passwordDigests.get(source);
    if (!expected) this.passwordDigests.set(source, (expected = digest(source.credentials.password)));
    return timingSafeEqual(expected, digest(password)) ? source : undefined;
  }

  /**
   * Basic credentials to their source. A header value that verified once maps straight to its source until the
   * next reload (as Squid's credentials cache does), sparing a base64 decode and two digests per connection; the
   * map is bounded, and a value that never verified always takes the constant-time path.
   */
  private sourceByAuthorization(value: string | undefined): EgressSource | undefined {
    if (value === undefined) return undefined;
    const known = this.verified.get(value);
    if (known) return known;
    const credentials = basicCredentials(value);
    const source = credentials && this.sourceByCredentials(credentials.username, credentials.password);
    if (source) {
      if (this.verified.size >= CACHE_LIMIT) this.verified.clear();
      this.verified.set(value, source);
    }
    return source;
  }

  private handshakeFailure(attempt: Attempt, err: unknown): FailureReason {
    if (err instanceof HandshakeEnded) {
      attempt.fail(err.why === 'timeout' ? 'handshake_timeout' : 'downstream_disconnect', err.message);
    } else if (err instanceof ProtocolError) {
      const reason = err.code === 'HEADER_TOO_LARGE' ? 'header_too_large' : err.code === 'UNSUPPORTED' ? 'unsupported_request' : 'protocol_error';
      attempt.fail(reason, err.message);
    } else {
      attempt.fail('protocol_error', (err as Error).message);
    }
    return attempt.failure!.reason;
  }

  /** `early` is what the native plane read before handing the connection over, `ageMs` the time since accept. */
  private handleHttp(client: Socket, dedicatedSource: string | undefined, early = EMPTY, ageMs = 0): void {
    const attempt = this.begin(client, 'connect', ageMs);
    const reader = new HandshakeReader(client, Date.now() - ageMs + this.config.timeouts.handshakeMs, early);
    reader.next(this.parseHead, (err, head) => {
      // Called from a socket event: a handler bug must cost this connection, not the process.
      try {
        if (err) this.refuseHttp(client, attempt, this.handshakeFailure(attempt, err));
        else this.onHttpHead(client, attempt, reader, head!, dedicatedSource);
      } catch (bug) {
        this.abandon(client, bug as Error);
      }
    });
  }

  private readonly parseHead = (buffer: Buffer): RequestHead | undefined => parseRequestHead(buffer, this.config.limits.maxHeaderBytes);

  private onHttpHead(client: Socket, attempt: Attempt, reader: HandshakeReader, head: RequestHead, dedicatedSource: string | undefined): void {
    let target: { host: string; port: number; path?: string };
    try {
      if (head.method === 'CONNECT') {
        target = parseAuthority(head.target);
      } else {
        attempt.protocol = 'http';
        if (head.target.startsWith('/')) throw new ProtocolError('MALFORMED_REQUEST', 'this is a proxy: send an absolute http:// URL or CONNECT');
        target = parseAbsoluteTarget(head.target);
      }
    } catch (err) {
      this.refuseHttp(client, attempt, this.handshakeFailure(attempt, err));
      return;
    }
    attempt.host = target.host;
    attempt.port = target.port;

    const source = dedicatedSource
      ? this.config.sources.find((s) => s.id === dedicatedSource)
      : this.sourceByAuthorization(headerValue(head, 'Proxy-Authorization'));
    if (!source) {
      attempt.fail('unauthenticated', dedicatedSource ? `source ${dedicatedSource} is no longer configured` : 'missing or wrong Proxy-Authorization (Basic)');
      this.refuseHttp(client, attempt, 'unauthenticated', 'Proxy-Authenticate: Basic realm="custos egress"\r\n');
      return;
    }
    if (!this.admit(attempt, source)) {
      this.refuseHttp(client, attempt, 'connection_limit');
      return;
    }

    const isConnect = head.method === 'CONNECT';
    this.connectOut(attempt, client, reader, source, target.host, target.port, (upstream) => {
      try {
        if (!upstream) {
          this.refuseHttp(client, attempt, attempt.failure?.reason ?? attempt.agentFailure ?? 'connect_error');
          return;
        }
        if (isConnect && !upstream.replied) client.write(CONNECT_ESTABLISHED);
        if (!isConnect) upstream.socket.write(originFormHead(head, target.path!));
        this.tunnel(attempt, client, reader, upstream);
      } catch (bug) {
        upstream?.socket.destroy();
        this.abandon(client, bug as Error);
      }
    });
  }

  /** Ends a refused HTTP attempt with a status whose body says why (and the reason code, for agents upstream). */
  private refuseHttp(client: Socket, attempt: Attempt, reason: FailureReason, extraHeaders = ''): void {
    closeRefused(client, attempt, httpRefusal(attempt, reason, extraHeaders));
  }

  // ---- the native plane's fast path ----

  /**
   * A CONNECT head read by the plane. The fast path takes a valid target, a known source under its connection limit,
   * and only direct policies without the SNI guard among the candidates; anything else is handed back and takes the
   * socket path, which answers it exactly as it answers a connection accepted by Node.
   */
  private onPlaneConnect(head: PlaneHead): void {
    let target: { host: string; port: number };
    try {
      target = parseAuthority(head.target);
    } catch {
      plane!.handoff(head.tunnel);
      return;
    }
    this.planeFastPath(head, 'connect', target, undefined);
  }

  /**
   * A forward-proxy request head read by the plane: the same fast path as a CONNECT, with the request rewritten to
   * origin-form as the socket path does (`originFormHead`) and sent to the destination before the body.
   */
  private onPlaneRequest(request: Omit<PlaneHead, 'target' | 'authorization'> & { head: Buffer }): void {
    let head: RequestHead | undefined;
    let target: { host: string; port: number; path: string };
    try {
      head = parseRequestHead(request.head, this.config.limits.maxHeaderBytes);
      if (!head || head.length !== request.head.length || head.method === 'CONNECT' || head.target.startsWith('/')) throw new Error('not for the fast path');
      target = parseAbsoluteTarget(head.target);
    } catch {
      plane!.handoff(request.tunnel);
      return;
    }
    const preamble = Buffer.from(originFormHead(head, target.path), 'latin1');
    this.planeFastPath({ ...request, target: head.target, authorization: headerValue(head, 'Proxy-Authorization') }, 'http', target, preamble);
  }

  private planeFastPath(head: PlaneHead, protocol: 'connect' | 'http', target: { host: string; port: number }, preamble: Buffer | undefined): void {
    const { tunnel, peer, ageMs } = head;
    const fast = this.fastPathFor(target, head.authorization, head.dedicatedSource);
    if (!fast) {
      plane!.handoff(tunnel);
      return;
    }
    const { source, host, port, candidates } = fast;
    countPath('plane_decided');
    const state = this.beginPlane(tunnel, protocol, peer, ageMs);
    const { attempt } = state;
    attempt.host = host;
    attempt.port = port;
    // fastPathFor saw the source under its limit in this same turn, so admission cannot fail here.
    this.admit(attempt, source);
    this.decideThen(
      attempt,
      source,
      host,
      port,
      (decision) => {
        if (this.planeTunnels.get(tunnel) !== state) return; // aborted (drain) while deciding
        if (decision?.policy) this.notePolicy(attempt, decision.policy);
        if (decision?.allowed && !isPlain(decision.policy)) attempt.fail('connect_error', `the configuration changed while ${host} was decided; try again`);
        else if (decision && !decision.allowed) attempt.fail(decision.reason, decision.detail);
        else if (this.draining) attempt.fail('draining', 'the proxy is shutting down');
        if (attempt.failure || !decision?.allowed) {
          this.refusePlane(tunnel, attempt);
          return;
        }
        attempt.address = decision.addresses[0];
        state.dialing = { addresses: decision.addresses, port, index: 0, source: this.sourceNumber(source), preamble };
        this.dialPlane(tunnel, state);
        // A forwarded request is rewritten per request: only CONNECT is repeated by the plane alone.
        const remembered = protocol === 'connect' && this.decisions.get(`${source.id} ${host} ${port}`) === decision && decision.addresses.length === 1;
        if (remembered) this.rememberVerdict(head, source, decision.policy, host, port, decision.addresses[0]!);
      },
      (err) => {
        this.log.error({ err }, 'egress decision failed');
        attempt.fail('protocol_error', `internal error: ${err.message}`);
        this.refusePlane(tunnel, attempt);
      },
      candidates,
    );
  }

  /** The source and, when nothing is kept for the destination, its candidate policies (handed on to `decide`). */
  private fastPathFor(
    target: { host: string; port: number },
    authorization: string | undefined,
    dedicatedSource: string | undefined,
  ): { source: EgressSource; host: string; port: number; candidates: EgressPolicy[] | undefined } | undefined {
    if (this.draining) return undefined;
    const { host, port } = target;
    const source = dedicatedSource ? this.config.sources.find((s) => s.id === dedicatedSource) : this.sourceByAuthorization(authorization);
    if (!source || (this.perSource.get(source.id) ?? 0) >= source.maxConnections) return undefined;
    const cached = this.decisions.get(`${source.id} ${host} ${port}`);
    if (cached) return !cached.policy || isPlain(cached.policy) ? { source, host, port, candidates: undefined } : undefined;
    const candidates = candidatePolicies(sourcePolicies(this.config, source), host, port);
    return candidates.every(isPlain) ? { source, host, port, candidates } : undefined;
  }

  /**
   * A decision that depends only on the credentials and an IP-literal target (kept in `decisions` until the next
   * reload, which makes the plane forget it too): the plane repeats it by itself, off the JS thread.
   */
  private rememberVerdict(head: { listener: number; target: string; authorization: string | undefined }, source: EgressSource, policy: EgressPolicy, host: string, port: number, address: string): void {
    if (this.verdicts.size >= CACHE_LIMIT * 4) {
      // Far more than the plane keeps: drop them all, and make the plane drop its own, so no number goes missing.
      plane!.forget();
      this.verdicts.clear();
    }
    const verdict = this.nextVerdict++;
    const dial = { ip: address, port, connectMs: this.config.timeouts.connectMs, idleMs: this.config.timeouts.idleMs };
    if (plane!.remember(head.listener, head.authorization, head.target, verdict, dial, this.sourceNumber(source), source.maxConnections)) {
      this.verdicts.set(verdict, { source, policy, host, port, address });
    }
  }

  private sourceNumber(source: EgressSource): number {
    let number = this.sourceNumbers.get(source.id);
    if (number === undefined) this.sourceNumbers.set(source.id, (number = plane!.sourceNumber()));
    return number;
  }

  /** A connection the plane is already dialling on a remembered verdict: only its attempt is made here. */
  private onPlaneVerdict(tunnel: number, peer: string, ageMs: number, verdict: number): void {
    countPath('plane_verdict');
    const state = this.beginPlane(tunnel, 'connect', peer, ageMs);
    const { attempt } = state;
    const known = this.verdicts.get(verdict);
    if (!known) {
      // Cannot happen while numbers are dropped only together with the plane's copies; fail closed if it does.
      this.log.error({ verdict }, 'egress plane dialled on a verdict this proxy does not know');
      attempt.fail('protocol_error', 'internal error: unknown verdict');
      plane!.abort(tunnel);
      return;
    }
    attempt.host = known.host;
    attempt.port = known.port;
    attempt.address = known.address;
    this.admit(attempt, known.source, false);
    this.notePolicy(attempt, known.policy);
    state.dialing = { addresses: [known.address], port: known.port, index: 0, source: this.sourceNumber(known.source) };
  }

  private beginPlane(tunnel: number, protocol: ProxyProtocol, peer: string, ageMs: number): PlaneTunnel {
    const state: PlaneTunnel = { attempt: this.newAttempt(protocol, peer, ageMs, () => this.planeTunnels.delete(tunnel)) };
    this.planeTunnels.set(tunnel, state);
    return state;
  }

  /** Dials the current address of the tunnel's checked list; each failure moves on to the next, as `dialDirect` does. */
  private dialPlane(tunnel: number, state: PlaneTunnel): void {
    const dialing = state.dialing!;
    const address = dialing.addresses[dialing.index]!;
    if (!plane!.dial(tunnel, address, dialing.port, this.config.timeouts.connectMs, this.config.timeouts.idleMs, dialing.source, dialing.preamble)) {
      this.planeDialFailed(tunnel, 'EINVAL');
    } else {
      state.attempt.address = address;
    }
  }

  private planeDialFailed(tunnel: number, code: string): void {
    const state = this.planeTunnels.get(tunnel);
    const dialing = state?.dialing;
    if (!state || !dialing) return;
    const address = dialing.addresses[dialing.index]!;
    if (++dialing.index < dialing.addresses.length) {
      this.dialPlane(tunnel, state);
      return;
    }
    const failure = dialFailure(code, address, dialing.port, this.config.timeouts.connectMs);
    state.attempt.fail(failure.reason, failure.message);
    this.refusePlane(tunnel, state.attempt);
  }

  private planeClosed(tunnel: number, toUpstream: number, fromUpstream: number, reason: PlaneCloseReason, connected: boolean): void {
    const attempt = this.planeTunnels.get(tunnel)?.attempt;
    if (!attempt) return;
    if (connected) {
      attempt.egressed = true;
      attempt.requestSize = toUpstream;
      attempt.responseSize = fromUpstream;
      attempt.closeReason ??= reason === 'aborted' ? 'draining' : reason;
    } else {
      attempt.fail('draining', 'the proxy shut down');
    }
    attempt.end();
  }

  private refusePlane(tunnel: number, attempt: Attempt): void {
    const reply = httpRefusal(attempt, attempt.failure!.reason);
    attempt.end();
    plane!.refuse(tunnel, Buffer.from(reply));
  }

  private async handleSocks(client: Socket, dedicatedSource: string | undefined): Promise<void> {
    const attempt = this.begin(client, 'socks5');
    const reader = new HandshakeReader(client, Date.now() + this.config.timeouts.handshakeMs);
    const refuse = (reply?: Buffer): void => closeRefused(client, attempt, reply);
    let source: EgressSource | undefined;
    let request;
    try {
      const greeting = await reader.read(parseSocksGreeting);
      const offersNone = greeting.methods.includes(SOCKS.methodNone);
      const offersUserPass = greeting.methods.includes(SOCKS.methodUserPass);
      if (dedicatedSource && (offersNone || offersUserPass)) {
        client.write(Buffer.from([SOCKS.version, offersNone ? SOCKS.methodNone : SOCKS.methodUserPass]));
        if (!offersNone) await reader.read(parseSocksUserPass);
        if (!offersNone) client.write(Buffer.from([0x01, 0x00]));
        source = this.config.sources.find((s) => s.id === dedicatedSource);
      } else if (!dedicatedSource && offersUserPass) {
        client.write(Buffer.from([SOCKS.version, SOCKS.methodUserPass]));
        const credentials = await reader.read(parseSocksUserPass);
        source = this.sourceByCredentials(credentials.username, credentials.password);
        // RFC 1929: a non-zero status means failure and the server closes the connection.
        client.write(Buffer.from([0x01, source ? 0x00 : 0x01]));
      } else {
        client.write(Buffer.from([SOCKS.version, SOCKS.methodUnacceptable]));
      }
      if (!source) {
        attempt.fail('unauthenticated', dedicatedSource ? `source ${dedicatedSource} is no longer configured` : 'SOCKS5 username/password missing or wrong');
        refuse();
        return;
      }
      request = await reader.read(parseSocksRequest);
    } catch (err) {
      const reason = this.handshakeFailure(attempt, err);
      refuse(reason === 'unsupported_request' ? socksReply(SOCKS.reply.addressTypeNotSupported) : undefined);
      return;
    }
    attempt.host = request.host;
    attempt.port = request.port;
    if (!this.admit(attempt, source)) {
      refuse(socksReply(FAILURE_REPLIES.connection_limit[1]));
      return;
    }
    if (request.command !== SOCKS.cmdConnect) {
      attempt.fail('unsupported_request', `SOCKS5 command ${request.command} is not supported (CONNECT only)`);
      refuse(socksReply(SOCKS.reply.commandNotSupported));
      return;
    }
    const upstream = await new Promise<Connected | undefined>((done) => this.connectOut(attempt, client, reader, source, request.host, request.port, done));
    if (!upstream) {
      refuse(socksReply(FAILURE_REPLIES[attempt.failure?.reason ?? attempt.agentFailure ?? 'connect_error'][1]));
      return;
    }
    if (!upstream.replied) client.write(socksReply(SOCKS.reply.succeeded, { address: upstream.socket.localAddress ?? '0.0.0.0', port: upstream.socket.localPort ?? 0 }));
    this.tunnel(attempt, client, reader, upstream);
  }

  private tunnel(attempt: Attempt, client: Socket, reader: HandshakeReader, upstream: Upstream): void {
    const entry = this.open.get(client);
    if (entry) entry.upstream = upstream.socket;
    if (upstream.early.length) client.write(upstream.early);
    const rest = reader.takeRest();
    if (rest.length) upstream.socket.write(rest);
    relay(client, upstream.socket, attempt, { idleMs: this.config.timeouts.idleMs, upstreamBase: upstream.base }, () => attempt.end());
  }

  /**
   * Decision, resolution and dial; `done` gets the upstream, or undefined with `attempt.failure` set when traffic did
   * not leave. The common case (a cached decision, a direct policy) runs without a promise.
   */
  private connectOut(
    attempt: Attempt,
    client: Socket,
    reader: HandshakeReader,
    source: EgressSource,
    host: string,
    port: number,
    done: (upstream: Connected | undefined) => void,
  ): void {
    if (this.draining) {
      attempt.fail('draining', 'the proxy is shutting down');
      done(undefined);
      return;
    }
    this.decideThen(
      attempt,
      source,
      host,
      port,
      (decision) => (decision ? this.afterDecision(attempt, client, reader, host, port, decision, done) : done(undefined)),
      (err) => this.abandon(client, err),
    );
  }

  /** The decision: at once when one for this IP-literal destination is kept, else through `decide`. */
  private decideThen(
    attempt: Attempt,
    source: EgressSource,
    host: string,
    port: number,
    then: (decision: Decision | undefined) => void,
    failed: (err: Error) => void,
    candidates?: EgressPolicy[],
  ): void {
    const cached = this.decisions.get(`${source.id} ${host} ${port}`);
    if (cached) then(cached);
    else this.decide(attempt, source, host, port, candidates).then(then, failed);
  }

  private afterDecision(
    attempt: Attempt,
    client: Socket,
    reader: HandshakeReader,
    host: string,
    port: number,
    decision: Decision,
    done: (upstream: Connected | undefined) => void,
  ): void {
    if (!decision.allowed) {
      if (decision.policy) this.notePolicy(attempt, decision.policy);
      attempt.fail(decision.reason, decision.detail);
      done(undefined);
      return;
    }
    const policy = decision.policy;
    this.notePolicy(attempt, policy);
    attempt.address = decision.addresses[0];
    if (!policy.requireSni) {
      this.dialOut(attempt, client, policy, decision.addresses, port, false, done);
      return;
    }
    this.checkSni(attempt, client, reader, policy, host, port).then(
      (replied) => (replied ? this.dialOut(attempt, client, policy, decision.addresses, port, true, done) : done(undefined)),
      (err: Error) => this.abandon(client, err),
    );
  }

  /**
   * The domain-fronting guard: the client is told the tunnel is up before anything is dialled (its ClientHello comes
   * only after that reply) and the hello must name the allowed host. Resolves true when it passed.
   */
  private async checkSni(attempt: Attempt, client: Socket, reader: HandshakeReader, policy: EgressPolicy, host: string, port: number): Promise<boolean> {
    if (attempt.protocol === 'http') {
      attempt.fail('sni_missing', `policy ${policy.id} requires TLS with SNI; a plain HTTP request has none`);
      return false;
    }
    client.write(attempt.protocol === 'socks5' ? socksReply(SOCKS.reply.succeeded) : CONNECT_ESTABLISHED);
    try {
      const hello = await reader.peek(parseClientHelloSni);
      if (hello.kind !== 'sni') {
        attempt.fail('sni_missing', hello.kind === 'not_tls' ? 'the tunnel did not start with a TLS ClientHello' : 'the ClientHello has no server_name');
        return false;
      }
      if (!sniAllowed(policy, host, port, hello.serverName)) {
        attempt.fail('sni_mismatch', `TLS server name ${hello.serverName} does not match ${host} (policy ${policy.id})`);
        return false;
      }
    } catch (err) {
      this.handshakeFailure(attempt, err);
      return false;
    }
    return true;
  }

  private dialOut(
    attempt: Attempt,
    client: Socket,
    policy: EgressPolicy,
    addresses: string[],
    port: number,
    replied: boolean,
    done: (upstream: Connected | undefined) => void,
  ): void {
    if (client.destroyed || client.readableEnded) {
      attempt.fail('downstream_disconnect', 'the client closed before the destination was dialled');
      done(undefined);
      return;
    }
    if (policy.type === 'agent-proxy') {
      this.handToAgent(attempt, policy, addresses[0]!, port).then(
        (upstream) => this.dialled(attempt, client, upstream, replied, done),
        (err: Error) => this.abandon(client, err),
      );
    } else {
      this.dialDirect(attempt, addresses, port, 0, undefined, (upstream) => this.dialled(attempt, client, upstream, replied, done));
    }
  }

  private dialled(attempt: Attempt, client: Socket, upstream: Upstream | undefined, replied: boolean, done: (upstream: Connected | undefined) => void): void {
    if (!upstream) return done(undefined);
    if (client.destroyed) {
      attempt.closeReason = 'client_reset';
      upstream.socket.destroy();
      return done(undefined);
    }
    done({ socket: upstream.socket, base: upstream.base, early: upstream.early, replied });
  }

  /**
   * The policy decision, resolving the name once. A decision for an IP literal involves no DNS, so it is kept
   * (bounded, until the next reload) and the next connection to the same destination dials the same checked
   * address without deciding again. Undefined with `attempt.failure` set when the name did not resolve.
   */
  private async decide(
    attempt: Attempt,
    source: EgressSource,
    host: string,
    port: number,
    candidates = candidatePolicies(sourcePolicies(this.config, source), host, port),
  ): Promise<Decision | undefined> {
    const literal = ipLiteral(host);
    let decision: Decision;
    if (candidates.length === 0) {
      decision = { allowed: false, reason: 'no_matching_policy', detail: `no policy imported by ${source.id} allows ${host} port ${port}` };
    } else if (literal) {
      decision = decide(candidates, host, port, [literal.toString()]);
    } else {
      try {
        return decide(candidates, host, port, await this.resolver.resolve(host));
      } catch (err) {
        attempt.policy = candidates[0]!.id;
        attempt.fail('dns_failure', err instanceof ResolveError ? err.message : `resolving ${host}: ${(err as Error).message}`);
        return undefined;
      }
    }
    if (literal) {
      if (this.decisions.size >= CACHE_LIMIT) this.decisions.clear();
      this.decisions.set(`${source.id} ${host} ${port}`, decision);
    }
    return decision;
  }

  private notePolicy(attempt: Attempt, policy: EgressPolicy): void {
    attempt.policy = policy.id;
    attempt.networkType = policy.type === 'agent-proxy' ? 'agent proxy' : 'direct';
    if (policy.type === 'agent-proxy') attempt.networkResources = policy.agents.map((a) => a.id);
  }

  /** Tries each checked address in order; the first to accept the TCP connection carries the tunnel. */
  private dialDirect(attempt: Attempt, addresses: string[], port: number, index: number, last: DialError | undefined, done: (upstream: Upstream | undefined) => void): void {
    if (index >= addresses.length) {
      attempt.fail(last!.reason, last!.message);
      done(undefined);
      return;
    }
    const address = addresses[index]!;
    dialThen(address, port, this.config.timeouts.connectMs, (err, socket) => {
      if (err) {
        this.dialDirect(attempt, addresses, port, index + 1, err, done);
        return;
      }
      attempt.address = address;
      attempt.egressed = true;
      done({ socket: socket!, base: NO_BYTES, early: EMPTY });
    });
  }

  /**
   * Hands the connection to one healthy agent of the policy (failing over on dial errors). Seed 000: handed to an
   * agent is success, even if the agent then cannot reach the destination (recorded as close_reason agent_rejected).
   */
  private async handToAgent(attempt: Attempt, policy: EgressPolicy, address: string, port: number): Promise<Upstream | undefined> {
    const candidates = this.agents.candidates(policy.agents);
    const tried: string[] = [];
    for (const agent of candidates) {
      tried.push(agent.id);
      let socket: Socket;
      try {
        socket = await dial(agent.host, agent.port, this.config.timeouts.connectMs);
      } catch (err) {
        this.agents.markDown(agent, (err as Error).message);
        continue;
      }
      attempt.egressed = true;
      attempt.networkResources = [agent.id];
      attempt.address = address;
      return this.agentConnect(attempt, agent, socket, address, port);
    }
    attempt.networkResources = policy.agents.map((a) => a.id);
    attempt.fail('no_healthy_agent', tried.length ? `no agent of ${policy.id} accepted a connection (tried ${tried.join(', ')})` : `every agent of ${policy.id} failed its health check`);
    return undefined;
  }

  private async agentConnect(attempt: Attempt, agent: AgentRef, socket: Socket, address: string, port: number): Promise<Upstream | undefined> {
    const target = formatHostPort(ipLiteral(address)!.toString(), port);
    socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\nCustos-Connection-Id: ${attempt.connectionId}\r\n\r\n`);
    const reader = new HandshakeReader(socket, Date.now() + this.config.timeouts.connectMs + this.config.timeouts.handshakeMs);
    try {
      const answer = await reader.read((b) => parseResponseHead(b));
      if (answer.status !== 200) {
        attempt.closeReason = 'agent_rejected';
        attempt.agentFailure = isFailureReason(answer.failure) ? answer.failure : 'connect_error';
        attempt.closeDetail = `agent ${agent.id} could not reach ${address} port ${port}: ${answer.failure ?? answer.status}`;
        this.log.info({ agent: agent.id, status: answer.status, failure: answer.failure, connection: attempt.connectionId }, 'agent could not reach the destination');
        socket.destroy();
        return undefined;
      }
    } catch (err) {
      attempt.closeReason = 'agent_rejected';
      attempt.agentFailure = 'connect_error';
      attempt.closeDetail = `agent ${agent.id} answered CONNECT badly: ${(err as Error).message}`;
      this.log.warn({ agent: agent.id, err: (err as Error).message }, 'agent answered CONNECT badly');
      socket.destroy();
      return undefined;
    }
    const early = reader.takeRest();
    return { socket, base: { read: socket.bytesRead - early.length, written: socket.bytesWritten }, early };
  }
}

/**
 * Ends a refused attempt now (its duration is the time to the decision) and tells the client why; a client that
 * does not close within a second is closed for it.
 */
function closeRefused(client: Socket, attempt: Attempt, reply?: string | Buffer): void {
  attempt.end();
  if (!client.destroyed) {
    if (reply === undefined) client.end();
    else client.end(reply);
    client.resume();
    watchDeadline({ at: Date.now() + 1000, expire: () => client.destroy() });
  }
}

/** The HTTP reply refusing an attempt: a status whose body says why, and the reason code for agents upstream. */
function httpRefusal(attempt: Attempt, reason: FailureReason, extraHeaders = ''): string {
  const [status] = FAILURE_REPLIES[reason];
  const body = `${attempt.failure?.detail ?? attempt.closeDetail ?? reason}\n`;
  return `HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n${AGENT_FAILURE_HEADER}: ${reason}\r\n${extraHeaders}\r\n${body}`;
}

/** A policy the native plane's fast path can carry: direct, without the SNI guard. */
function isPlain(policy: EgressPolicy | undefined): boolean {
  return policy !== undefined && policy.type === 'direct' && !policy.requireSni;
}

/** Bound of the credential and decision caches (cleared when full: keys come from clients). */
const CACHE_LIMIT = 4096;

function isFailureReason(value: string | undefined): value is FailureReason {
  return value !== undefined && value in FAILURE_REPLIES;
}

/** The origin-form request for the destination: hop-by-hop and proxy headers dropped, one request per connection. */
function originFormHead(head: RequestHead, path: string): string {
  const lines = [`${head.method} ${path} ${head.version}`];
  for (const [name, value] of head.headers) if (!HOP_BY_HOP.has(name.toLowerCase())) lines.push(`${name}: ${value}`);
  lines.push('Connection: close');
  return `${lines.join('\r\n')}\r\n\r\n`;
}

function parseResponseHead(buffer: Buffer): { status: number; failure: string | undefined; length: number } | undefined {
  const end = buffer.indexOf('\r\n\r\n');
  if (end < 0) {
    if (buffer.length > 16 * 1024) throw new ProtocolError('HEADER_TOO_LARGE', 'agent answer head too large');
    return undefined;
  }
  const lines = buffer.subarray(0, end).toString('latin1').split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]!)?.[1];
  if (!status) throw new ProtocolError('MALFORMED_REQUEST', `agent answered ${JSON.stringify(lines[0]!.slice(0, 80))}`);
  const failure = lines.find((l) => l.toLowerCase().startsWith(`${AGENT_FAILURE_HEADER.toLowerCase()}:`))?.split(':')[1]?.trim();
  return { status: Number(status), failure, length: end + 4 };
}
