/**
 * One client connection: start-up (SSLRequest, CancelRequest), SCRAM-SHA-256 authentication, then the query
 * protocols. Simple Query and Parse messages are rewritten (cached by statement text); every other message is
 * forwarded as bytes, so Bind/Execute/Sync pipelines, COPY and transactions behave exactly as upstream decides.
 *
 * A refused statement is not answered locally: the proxy sends upstream a statement that fails at parse analysis
 * and carries a one-time marker, then swaps the marker's ErrorResponse for its own (SQLSTATE 42501). Upstream
 * thereby enters its error state itself (transaction aborted, extended-protocol messages discarded until Sync),
 * so the protocol state the client sees is always the database's own and pipelines never hang.
 */
import { randomBytes, randomInt, randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { componentLogger } from '../telemetry/index.ts';
import { DataProxyError } from './errors.ts';
import type { ProxyContext } from './proxy.ts';
import type { Principal, Resolution } from './policy.ts';
import type { QueryAudit } from './audit.ts';
import type { PolicyConfig } from './config.ts';
import { rewriteQuery, UnknownRelationError, type RewriteResult } from './rewrite.ts';
import { fillTemplate, templateOf, type Template } from './literals.ts';
import { ScramServerExchange, SCRAM_MECHANISM, createVerifier } from './scram.ts';
import { FORWARDED_PARAMETERS, type UpstreamSession } from './upstream.ts';
import * as relay from './relay.ts';
import {
  authenticationOk, backendKeyData, BodyReader, cstring, errorResponse, int32, message, MessageReader, parseErrorFields, parseMessage,
  MAX_MESSAGE_BYTES, parseStartup, queryMessage, readParse, readyForQuery, type Message,
} from './wire.ts';

const log = componentLogger('dataproxy');
const EXPORT_CATEGORIES = ['dataExport'];
const NO_CATEGORIES: string[] = [];
/** A verifier for users that do not exist, so their exchange fails like a wrong password does. */
const UNKNOWN_USER_VERIFIER = createVerifier(randomBytes(16).toString('hex'), 4096);

type Phase = 'startup' | 'sasl-initial' | 'sasl-final' | 'connecting' | 'ready' | 'relayed' | 'closed';
/** What to do with one statement text; `sql` is what goes upstream (the statement's own text when unchanged). */
type Outcome = { ok: true; result: RewriteResult; sql: string } | { ok: false; message: string; event: 'refused' | 'retrieval'; sqlstate?: string };
type Parse = ReturnType<typeof readParse>;
/** Statements a session remembers beside the shared cache, so the hot path builds no cache key. */
const SESSION_STATEMENTS = 256;

/** The rewritten Parse of a cached outcome, kept with it: drivers re-send the same Parse for every execution. */
const rewrittenParses = new WeakMap<Outcome, { name: string; paramTypes: number[]; bytes: Buffer }>();
function rewrittenParse(parse: Parse, sql: string, outcome: Outcome): Buffer {
  const known = rewrittenParses.get(outcome);
  if (known && known.name === parse.name && known.paramTypes.length === parse.paramTypes.length && known.paramTypes.every((t, i) => t === parse.paramTypes[i])) {
    return known.bytes;
  }
  const bytes = parseMessage(parse.name, sql, parse.paramTypes);
  rewrittenParses.set(outcome, { name: parse.name, paramTypes: parse.paramTypes, bytes });
  return bytes;
}

export class Session implements relay.RelayedSession {
  readonly processId = randomInt(1, 2 ** 31 - 1);
  readonly secretKey = randomInt(1, 2 ** 31 - 1);
  private phase: Phase = 'startup';
  private socket: Socket;
  private readonly reader = new MessageReader(true);
  private readonly inbox: Message[] = [];
  private busy = false;
  private readonly outbox: Buffer[] = [];
  private scram: ScramServerExchange | undefined;
  private userName = '';
  private principal: Principal | undefined;
  private upstream: UpstreamSession | undefined;
  /** The login event's correlationId, until the session's first query takes it (see `queryCorrelationId`). */
  private loginCorrelationId: string | undefined = randomUUID();
  private resolution: { version: number; value: Resolution } | undefined;
  /** Marker → the ErrorResponse that replaces upstream's error for it (see the file comment). */
  private readonly refusals = new Map<string, Buffer>();
  private upstreamPending: Buffer = Buffer.alloc(0);
  private startupParameters: Record<string, string> = {};
  /** The native relay's id for this session, once it took the sockets (see relay.ts). */
  private relayId = 0;
  /** The relay's cached statements by its entry index: what a hit reports. */
  private readonly relayEntries: { sql: string; outcome: Outcome }[] = [];
  /** The decision last sent to the relay with a cache key, until the relay says where it keeps it. */
  private lastCacheable: { sql: string; outcome: Outcome } | undefined;
  readonly sourceIp: string | null;

  constructor(
    socket: Socket,
    private readonly ctx: ProxyContext,
  ) {
    this.socket = socket;
    this.sourceIp = socket.remoteAddress ?? null;
    socket.setNoDelay(true);
    this.attach(socket);
  }

  private readonly onSocketData = (chunk: Buffer): void => this.onClientData(chunk);
  private readonly onSocketGone = (): void => this.close();

  private attach(socket: Socket): void {
    socket.on('data', this.onSocketData);
    socket.on('error', this.onSocketGone);
    socket.on('close', this.onSocketGone);
  }

  private onClientData(chunk: Buffer): void {
    if (this.phase === 'ready' && !this.busy && this.inbox.length === 0 && this.reader.buffered === 0) {
      this.forwardReady(chunk);
      return;
    }
    let messages: Message[];
    try {
      messages = this.reader.push(chunk);
    } catch (err) {
      this.fatal('08P01', (err as Error).message);
      return;
    }
    for (const m of messages) this.inbox.push(m);
    this.drain();
  }

  /**
   * The hot path of a ready session with nothing queued: whole messages are found by their 5-byte headers in the
   * chunk as received; only Query, Parse, FunctionCall and Terminate are looked into, everything else is forwarded
   * as the byte ranges it arrived in, in one write. A partial message, or a statement that needs an asynchronous
   * step (policy fetch, catalog refresh), continues on the queued path.
   */
  private forwardReady(chunk: Buffer): void {
    let offset = 0;
    let from = 0;
    while (chunk.length - offset >= 5) {
      const type = chunk[offset]!;
      const length = chunk.readInt32BE(offset + 1);
      if (length < 4 || length > MAX_MESSAGE_BYTES) {
        this.fatal('08P01', `invalid message length ${length} at offset ${offset}`);
        return;
      }
      const end = offset + 1 + length;
      if (end > chunk.length) break;
      if (type === 0x51 /* Q */ || type === 0x50 /* P */) {
        // The statement's own bytes stay in the forwarded range unless it is rewritten or refused.
        let parse: Parse | undefined;
        let sql: string;
        let outcome: Outcome | Promise<Outcome>;
        let replacement: Buffer | undefined;
        try {
          ({ parse, sql, outcome } = this.statement(type, chunk.subarray(offset + 5, end)));
          if (!(outcome instanceof Promise)) replacement = this.decide(parse, sql, outcome);
        } catch (err) {
          this.fatal('08P01', (err as Error).message);
          return;
        }
        if (!(outcome instanceof Promise)) {
          if (replacement) {
            if (offset > from) this.outbox.push(chunk.subarray(from, offset));
            this.outbox.push(replacement);
            from = end;
          }
          offset = end;
          continue;
        }
        if (offset > from) this.outbox.push(chunk.subarray(from, offset));
        const m = { type: parse ? 'P' : 'Q', raw: chunk.subarray(offset, end), body: chunk.subarray(offset + 5, end) };
        this.pause(outcome.then((o) => this.forward(m, parse, sql, o)));
        if (end < chunk.length) this.onClientData(chunk.subarray(end));
        return;
      }
      if (type === 0x46 /* F */ || type === 0x58 /* X */) {
        if (offset > from) this.outbox.push(chunk.subarray(from, offset));
        from = end;
        // Neither waits: a FunctionCall is refused or forwarded, a Terminate closes the session.
        void this.query({ type: String.fromCharCode(type), raw: chunk.subarray(offset, end), body: chunk.subarray(offset + 5, end) });
        if (this.phase === 'closed') return;
      }
      offset = end;
    }
    if (from === 0 && offset === chunk.length) this.outbox.push(chunk);
    else if (offset > from) this.outbox.push(chunk.subarray(from, offset));
    if (offset < chunk.length) this.reader.push(chunk.subarray(offset));
    this.flushUpstream();
  }

  /** The outbox is exactly the client's bytes, in order: write the received chunk rather than a copy. */
  private static joined(parts: Buffer[]): Buffer {
    const first = parts[0]!;
    let end = first.byteOffset + first.length;
    for (let i = 1; i < parts.length; i++) {
      const p = parts[i]!;
      if (p.buffer !== first.buffer || p.byteOffset !== end) return Buffer.concat(parts);
      end += p.length;
    }
    return Buffer.from(first.buffer, first.byteOffset, end - first.byteOffset);
  }

  /** Handles queued client messages in order; an asynchronous step (policy fetch, catalog refresh) pauses the queue. */
  private drain(): void {
    if (this.busy) return;
    while (this.inbox.length > 0 && this.phase !== 'closed') {
      const m = this.inbox.shift()!;
      let pending: Promise<void> | void;
      try {
        pending = this.handle(m);
      } catch (err) {
        this.fatal('08P01', (err as Error).message);
        return;
      }
      if (pending) {
        this.pause(pending);
        return;
      }
    }
    this.flushUpstream();
  }

  /** Holds later client messages in the queue until `pending` settles. */
  private pause(pending: Promise<void>): void {
    this.busy = true;
    pending.catch((err: Error) => this.fatal('XX000', err.message)).finally(() => {
      this.busy = false;
      this.drain();
    });
    this.flushUpstream();
  }

  private flushUpstream(): void {
    if (this.outbox.length === 0 || !this.upstream) return;
    this.upstream.write(this.outbox.length === 1 ? this.outbox[0]! : Session.joined(this.outbox));
    this.outbox.length = 0;
  }

  private handle(m: Message): Promise<void> | void {
    switch (this.phase) {
      case 'startup':
        return this.startup(m);
      case 'sasl-initial':
      case 'sasl-final':
        return this.sasl(m);
      case 'connecting':
        throw new DataProxyError('PROTOCOL', 'message before authentication completed');
      case 'ready':
        return this.query(m);
    }
  }

  private startup(m: Message): Promise<void> | void {
    const packet = parseStartup(m.raw);
    if (packet.kind === 'ssl' || packet.kind === 'gssenc') {
      // Bytes after the SSLRequest and before the handshake would be unauthenticated plaintext (CVE-2021-23214).
      if (this.reader.buffered > 0 || this.inbox.length > 0) throw new DataProxyError('PROTOCOL', 'data after SSLRequest before the TLS handshake');
      if (packet.kind === 'ssl' && this.ctx.tls) {
        this.socket.write('S');
        this.socket.removeAllListeners('data');
        const tls = new TLSSocket(this.socket, { isServer: true, secureContext: this.ctx.tls });
        this.socket = tls;
        this.attach(tls);
      } else {
        this.socket.write('N');
      }
      return;
    }
    if (packet.kind === 'cancel') {
      const target = this.ctx.sessions.get(packet.cancel!.processId);
      if (target && target.secretKey === packet.cancel!.secretKey) void target.upstream?.cancel();
      this.close();
      return;
    }
    if (packet.kind !== 'startup') throw new DataProxyError('PROTOCOL', `unsupported protocol version ${packet.version}`);
    this.startupParameters = packet.parameters;
    this.userName = packet.parameters['user'] ?? '';
    const user = this.ctx.config.users.find((u) => u.name === this.userName);
    this.scram = new ScramServerExchange(user?.verifier ?? UNKNOWN_USER_VERIFIER);
    if (user) this.principal = { name: user.name, id: user.id, groups: user.groups, project: this.ctx.config.project.id };
    this.phase = 'sasl-initial';
    this.socket.write(message('R', Buffer.concat([int32(10), cstring(SCRAM_MECHANISM), Buffer.from([0])])));
  }

  private sasl(m: Message): Promise<void> | void {
    if (m.type !== 'p') throw new DataProxyError('PROTOCOL', `expected a SASL response, got '${m.type}'`);
    try {
      if (this.phase === 'sasl-initial') {
        const r = new BodyReader(m.body);
        const mechanism = r.cstring();
        if (mechanism !== SCRAM_MECHANISM) throw new DataProxyError('AUTH', `unsupported SASL mechanism ${mechanism}`);
        const length = r.int32();
        const serverFirst = this.scram!.start(r.bytes(length).toString('utf8'));
        this.phase = 'sasl-final';
        this.socket.write(message('R', Buffer.concat([int32(11), Buffer.from(serverFirst)])));
        return;
      }
      const serverFinal = this.scram!.finish(m.body.toString('utf8'));
      if (!this.principal) throw new DataProxyError('AUTH', 'password authentication failed');
      this.socket.write(Buffer.concat([message('R', Buffer.concat([int32(12), Buffer.from(serverFinal)])), authenticationOk()]));
    } catch (err) {
      const reason = err instanceof DataProxyError && err.code === 'AUTH' ? err.message : 'malformed authentication exchange';
      this.ctx.emit(this.ctx.events.authenticationFailed(this.userName, this.sourceIp, reason), ['authenticationCheck']);
      this.fatal('28P01', `password authentication failed for user "${this.userName}"`);
      return;
    }
    this.ctx.emit(this.ctx.events.authenticationSucceeded(this.principal, this.loginCorrelationId!), ['authenticationCheck', 'userLogin']);
    this.phase = 'connecting';
    return this.connectUpstream();
  }

  private async connectUpstream(): Promise<void> {
    const params: Record<string, string> = {};
    for (const [k, v] of Object.entries(this.startupParameters)) if (FORWARDED_PARAMETERS.has(k)) params[k] = v;
    let upstream: UpstreamSession;
    try {
      upstream = await this.ctx.upstream.open(params);
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'upstream connection failed');
      this.fatal('08006', `the data proxy could not reach the database: ${(err as Error).message}`);
      return;
    }
    if (this.phase === 'closed') {
      upstream.close();
      return;
    }
    this.upstream = upstream;
    this.ctx.sessions.set(this.processId, this);
    const greeting = Buffer.concat([...upstream.greeting, backendKeyData(this.processId, this.secretKey), readyForQuery('I')]);
    if (await this.handOver(upstream, greeting)) return;
    upstream.onData((chunk) => this.onUpstreamData(chunk));
    upstream.onClose(() => this.close());
    this.socket.write(greeting);
    this.phase = 'ready';
  }

  /**
   * Gives both sockets to the native relay, which sends the client `greeting` and relays from then on; false when
   * this session stays on Node sockets (no relay, TLS, an upstream without a socket).
   */
  private async handOver(upstream: UpstreamSession, greeting: Buffer): Promise<boolean> {
    if (!this.ctx.relay || this.socket instanceof TLSSocket || !upstream.detach) return false;
    // What Node still holds for the client (the end of the SASL exchange) goes out before the relay writes.
    if (this.socket.writableLength > 0) await new Promise<void>((resolve) => this.socket.write(Buffer.alloc(0), () => resolve()));
    if (this.phase === 'closed') return true;
    if (!relay.canTake(this.socket)) return false;
    const backend = upstream.detach();
    if (!backend) return false;
    const clientFd = relay.takeDescriptor(this.socket)!;
    try {
      const lines = this.ctx.relayLog;
      this.relayId = relay.adopt(this, clientFd, backend.fd, this.reader.take(), Buffer.concat([greeting, backend.pending]),
        this.ctx.config.limits.maxQueryBytes, lines && { id: lines.id, authenticationLine: lines.authentication(this.principal!) });
    } catch (err) {
      log.error({ err: (err as Error).message }, 'the native relay could not take the session');
      backend.release();
      this.fatal('08006', 'the data proxy could not relay the session');
      return true;
    }
    backend.release();
    this.socket.off('data', this.onSocketData).off('error', this.onSocketGone).off('close', this.onSocketGone);
    this.socket.on('error', () => undefined);
    this.socket.destroy();
    this.phase = 'relayed';
    return true;
  }

  /** Whether the native relay holds this session's sockets (they no longer count among the server's). */
  get relayed(): boolean {
    return this.phase === 'relayed';
  }

  relayHit(entry: number, text: string | undefined): void {
    const known = this.relayEntries[entry];
    if (!known) throw new Error(`the relay reported entry ${entry}, which this session never cached`);
    this.report(text ?? known.sql, known.outcome);
    // The relay writes the session's next lines itself: these go before them.
    this.ctx.relayLog?.flush();
  }

  relayCached(entry: number): void {
    if (!this.lastCacheable) throw new Error(`the relay cached entry ${entry} for no decision`);
    this.relayEntries[entry] = this.lastCacheable;
    this.lastCacheable = undefined;
  }

  relayClosed(reason: relay.RelayCloseReason): void {
    log.debug({ reason, user: this.userName }, 'relayed session ended');
    this.relayId = 0;
    this.close();
  }

  /** A relay's decision request: the same checks and events as the Node path, answered with what goes upstream. */
  relayDecide(message: Buffer): void {
    const id = this.relayId;
    if (message[0] === 0x46 /* F */) {
      const refusal = this.functionCallRefusal();
      relay.decided(id, refusal ? this.relayRefusal(refusal) : {});
      return;
    }
    let parse: Parse | undefined;
    let sql: string;
    let outcome: Outcome | Promise<Outcome>;
    try {
      ({ parse, sql, outcome } = this.statement(message[0]!, message.subarray(5)));
    } catch (err) {
      this.fatal('08P01', (err as Error).message);
      return;
    }
    const answer = (o: Outcome): void => {
      if (this.phase !== 'relayed') return;
      if (o.ok) relay.noteDecisionEpoch(`${this.statementsVersion}:${this.statementsGeneration}`);
      const send = this.decide(parse, sql, o);
      if (!o.ok) {
        relay.decided(id, this.relayRefusal(send!));
        return;
      }
      const cache = this.relayCacheEntry(parse, sql, o);
      this.lastCacheable = cache ? { sql, outcome: cache.reported } : undefined;
      const lines = this.ctx.relayLog;
      const line = cache?.reported.ok ? lines?.resolution(this.principal!, this.queryAudit(sql, cache.reported.result), cache.reported.result) : undefined;
      // This statement's events are written before the relay writes any later ones for the session.
      lines?.flush();
      relay.decided(id, {
        send,
        cache: cache && { key: cache.key, rewritten: cache.rewritten, deadlineInMs: this.ctx.policies.freshForMs(), line },
      });
    };
    if (outcome instanceof Promise) outcome.then(answer).catch((err: Error) => this.fatal('XX000', err.message));
    else answer(outcome);
  }

  /** The refusal just made (see `refusalMarker`): the relay replaces its marker's error itself. */
  private relayRefusal(send: Buffer): relay.RelayDecision {
    const [marker, error] = [...this.refusals].at(-1)!;
    this.refusals.clear();
    return { send, refusal: { marker, error } };
  }

  /**
   * How the relay may keep a decision: by the Parse's text, or by the simple query's template (literals.ts) with
   * the rewritten template, whose literals the relay puts back as `filled` does here. Undefined: not kept (a
   * refusal, or a statement that took the full path because its template could not be used).
   */
  private relayCacheEntry(parse: Parse | undefined, sql: string, outcome: Outcome & { ok: true }): { key: string; rewritten: string | undefined; reported: Outcome } | undefined {
    const template = parse ? undefined : templateOf(sql);
    if (!template) return { key: sql, rewritten: outcome.sql === sql ? undefined : outcome.sql, reported: outcome };
    const kept = this.statements.get(template.text);
    if (!kept?.ok) return undefined;
    if (!kept.result.changed) return outcome.sql === sql ? { key: template.text, rewritten: undefined, reported: kept } : undefined;
    if (fillTemplate(kept.result.sql, template.literals) !== outcome.sql) return undefined;
    return { key: template.text, rewritten: kept.result.sql, reported: kept };
  }

  private query(m: Message): Promise<void> | void {
    switch (m.type) {
      case 'Q':
      case 'P': {
        const { parse, sql, outcome } = this.statement(m.raw[0]!, m.body);
        if (outcome instanceof Promise) return outcome.then((o) => this.forward(m, parse, sql, o));
        this.forward(m, parse, sql, outcome);
        return;
      }
      case 'F':
        this.outbox.push(this.functionCallRefusal() ?? m.raw);
        return;
      case 'X':
        this.flushUpstream();
        this.close();
        return;
      default:
        this.outbox.push(m.raw);
    }
  }

  /** A Query's or Parse's statement text and its check (synchronous when policies and rewrite are cached). */
  private statement(type: number, body: Buffer): { parse: Parse | undefined; sql: string; outcome: Outcome | Promise<Outcome> } {
    const parse = type === 0x50 /* P */ ? readParse(body) : undefined;
    const sql = parse ? parse.sql : body.toString('utf8', 0, body.length - 1);
    return { parse, sql, outcome: this.check(sql, parse ? Buffer.byteLength(sql) : body.length - 1) };
  }

  /**
   * What replaces a FunctionCall for a masked user (undefined: it goes as it is): the fast-path interface names a
   * function by oid, past any statement check.
   */
  private functionCallRefusal(): Buffer | undefined {
    if (this.resolution?.value.masked === false) return undefined;
    this.pendingRefusal('the fast-path function call interface is not allowed through the data proxy');
    return queryMessage(this.refusalMarker());
  }

  private lastRefusal = errorResponse('42501', '');
  private pendingRefusal(text: string, sqlstate = '42501'): void {
    this.lastRefusal = errorResponse(sqlstate, text);
  }

  /** A statement that fails at parse analysis upstream, naming a one-time marker; its error is replaced by ours. */
  private refusalMarker(): string {
    const marker = `custos_refusal_${randomBytes(12).toString('hex')}`;
    this.refusals.set(marker, this.lastRefusal);
    return `SELECT "${marker}"`;
  }

  /**
   * Emits the statement's events, then forwards the Query or Parse (its own bytes when the text is unchanged)
   * or its refusal.
   */
  private forward(m: Message, parse: Parse | undefined, sql: string, outcome: Outcome): void {
    this.outbox.push(this.decide(parse, sql, outcome) ?? m.raw);
  }

  /**
   * Emits the statement's events (its user.authentication, then its policy.resolution) and returns what goes
   * upstream instead of the Query or Parse: undefined when its own bytes go as they are.
   */
  private decide(parse: Parse | undefined, sql: string, outcome: Outcome): Buffer | undefined {
    this.report(sql, outcome);
    if (outcome.ok) {
      if (outcome.sql === sql) return undefined;
      return parse ? rewrittenParse(parse, outcome.sql, outcome) : queryMessage(outcome.sql);
    }
    this.pendingRefusal(outcome.message, outcome.sqlstate);
    return parse ? parseMessage(parse.name, this.refusalMarker(), []) : queryMessage(this.refusalMarker());
  }

  /** What a statement's policy.resolution reports. */
  private queryAudit(sql: string, r: RewriteResult): QueryAudit {
    // A metadata request is about the tables the user may see: it reports their policies, as the seed's example.
    const tables = r.metadata ? [...this.resolution!.value.plans.values()] : r.tables;
    return { request: r.metadata ? { metadata: r.metadata } : { query: sql }, tables, policies: this.ctx.policies.known() };
  }

  /** The statement's events: its user.authentication, then its policy.resolution (or the failure event). */
  private report(sql: string, outcome: Outcome): void {
    const who = this.principal!;
    const correlationId = this.queryCorrelationId(who);
    if (outcome.ok) {
      const r = outcome.result;
      this.ctx.policyResolved(who, correlationId, this.queryAudit(sql, r), r, r.exportsRows && !r.metadata ? EXPORT_CATEGORIES : NO_CATEGORIES);
      return;
    }
    if (outcome.event === 'retrieval') this.ctx.emit(this.ctx.events.policyRetrievalFailed(who, this.sourceIp, outcome.message), []);
    else this.ctx.emit(this.ctx.events.queryRefused(who, this.sourceIp, correlationId, { query: sql }, outcome.message), []);
  }

  /**
   * Seed 003: a query yields two events, user.authentication and policy.resolution, linked by a correlationId. The
   * login's event is the first query's authentication; each later query emits its own, with a fresh correlationId,
   * so every pair can be told apart.
   */
  private queryCorrelationId(who: Principal): string {
    const login = this.loginCorrelationId;
    if (login !== undefined) {
      this.loginCorrelationId = undefined;
      return login;
    }
    const correlationId = randomUUID();
    this.ctx.queryAuthenticated(who, correlationId);
    return correlationId;
  }

  /** Policies, then the (cached) rewrite; synchronous when both are cached, which is the hot path. */
  private check(sql: string, bytes: number): Outcome | Promise<Outcome> {
    if (bytes > this.ctx.config.limits.maxQueryBytes) {
      return { ok: false, message: `query longer than ${this.ctx.config.limits.maxQueryBytes} bytes`, event: 'refused' };
    }
    let current;
    try {
      current = this.ctx.policies.current();
    } catch (err) {
      return { ok: false, message: (err as Error).message, event: 'retrieval' };
    }
    if (current instanceof Promise) {
      return current.then((c) => this.checkWith(sql, c), (err: Error) => ({ ok: false as const, message: err.message, event: 'retrieval' as const }));
    }
    return this.checkWith(sql, current);
  }

  private checkWith(sql: string, c: { policies: PolicyConfig[]; version: number }): Outcome | Promise<Outcome> {
    if (this.resolution?.version !== c.version) this.resolution = { version: c.version, value: this.ctx.resolve(c.policies, this.principal!) };
    return this.rewriteWith(sql, this.resolution.value, c.version, true);
  }

  /** Simple-protocol statements differing only in literals share one cached rewrite (see literals.ts). */
  private rewriteWith(sql: string, resolution: Resolution, version: number, mayRefresh: boolean): Outcome | Promise<Outcome> {
    const template = templateOf(sql);
    if (!template) return this.cachedRewrite(sql, resolution, version, mayRefresh);
    const outcome = this.cachedRewrite(template.text, resolution, version, mayRefresh);
    if (outcome instanceof Promise) return outcome.then((o) => this.filled(sql, template, o, resolution, version, mayRefresh));
    return this.filled(sql, template, outcome, resolution, version, mayRefresh);
  }

  /** The template's outcome for this statement: its literals put back, or the full path when that is not possible. */
  private filled(sql: string, template: Template, o: Outcome, resolution: Resolution, version: number, mayRefresh: boolean): Outcome | Promise<Outcome> {
    if (!o.ok) return o.sqlstate === '42601' ? this.cachedRewrite(sql, resolution, version, mayRefresh) : o;
    if (!o.result.changed) return { ok: true, result: o.result, sql };
    const text = fillTemplate(o.result.sql, template.literals);
    return text === undefined ? this.cachedRewrite(sql, resolution, version, mayRefresh) : { ok: true, result: o.result, sql: text };
  }

  private readonly statements = new Map<string, Outcome>();
  private statementsVersion = -1;
  private statementsGeneration = -1;

  private cachedRewrite(sql: string, resolution: Resolution, version: number, mayRefresh: boolean): Outcome | Promise<Outcome> {
    const generation = this.ctx.catalog.generation;
    if (this.statementsVersion !== version || this.statementsGeneration !== generation || this.statements.size >= SESSION_STATEMENTS) {
      this.statements.clear();
      this.statementsVersion = version;
      this.statementsGeneration = generation;
    }
    const known = this.statements.get(sql);
    if (known) return known;
    const key = `${this.principal!.name}\0${version}\0${generation}\0${sql}`;
    let outcome = this.ctx.cache.get(key) as Outcome | undefined;
    if (!outcome) {
      try {
        const result = rewriteQuery(sql, this.ctx.rewriteContext(resolution, this.principal!, version));
        outcome = { ok: true, result, sql: result.sql };
      } catch (err) {
        if (err instanceof UnknownRelationError && mayRefresh) {
          return this.ctx.catalog.refresh().then(() => this.cachedRewrite(sql, resolution, version, false));
        }
        if (err instanceof DataProxyError && err.code === 'SYNTAX') {
          // Unmasked: the database reports its own syntax error. Masked: what the proxy cannot parse it cannot check.
          if (!resolution.masked) outcome = { ok: true, result: { sql, changed: false, tables: [], exportsRows: false, statementCount: 0 }, sql };
          else outcome = { ok: false, message: `syntax error: ${err.message}`, event: 'refused', sqlstate: '42601' };
        } else {
          if (!(err instanceof DataProxyError)) log.error({ err }, 'rewrite failed');
          outcome = { ok: false, message: err instanceof DataProxyError ? err.message : 'the statement could not be checked', event: 'refused' };
        }
      }
      this.ctx.cache.set(key, outcome);
    }
    this.statements.set(sql, outcome);
    return outcome;
  }

  /**
   * Upstream → client: forwarded as received, except an error answering a refusal marker, which is replaced.
   * True when the client socket still holds (part of) the chunk, whose memory the upstream would otherwise reuse.
   */
  private onUpstreamData(chunk: Buffer): boolean {
    if (this.refusals.size === 0 && this.upstreamPending.length === 0) {
      // Fast path: nothing to replace; still find message boundaries so a later refusal starts on one.
      const tail = this.completeMessagesLength(chunk);
      if (tail === chunk.length) {
        this.socket.write(chunk);
        return this.socket.writableLength > 0;
      }
      if (tail > 0) this.socket.write(chunk.subarray(0, tail));
      this.upstreamPending = Buffer.from(chunk.subarray(tail));
      return this.socket.writableLength > 0;
    }
    const data = this.upstreamPending.length ? Buffer.concat([this.upstreamPending, chunk]) : chunk;
    const parts: Buffer[] = [];
    let offset = 0;
    while (data.length - offset >= 5) {
      const total = data.readInt32BE(offset + 1) + 1;
      if (data.length - offset < total) break;
      const type = data[offset];
      const raw = data.subarray(offset, offset + total);
      if (type === 0x45 /* E */ && this.refusals.size > 0) {
        const text = parseErrorFields(raw.subarray(5))['M'] ?? '';
        const marker = /custos_refusal_[0-9a-f]{24}/.exec(text)?.[0];
        const replacement = marker ? this.refusals.get(marker) : undefined;
        if (marker) this.refusals.delete(marker);
        parts.push(replacement ?? raw);
      } else {
        if (type === 0x5a /* Z */) this.refusals.clear();
        parts.push(raw);
      }
      offset += total;
    }
    this.upstreamPending = offset < data.length ? Buffer.from(data.subarray(offset)) : Buffer.alloc(0);
    if (parts.length > 0) this.socket.write(parts.length === 1 ? parts[0]! : Buffer.concat(parts));
    return this.socket.writableLength > 0;
  }

  private completeMessagesLength(data: Buffer): number {
    let offset = 0;
    while (data.length - offset >= 5) {
      const total = data.readInt32BE(offset + 1) + 1;
      if (data.length - offset < total) break;
      offset += total;
    }
    return offset;
  }

  private fatal(code: string, text: string): void {
    if (this.phase === 'closed') return;
    if (this.phase === 'relayed') {
      if (this.relayId) relay.closeRelayed(this.relayId, errorResponse(code, text, 'FATAL'));
      this.relayId = 0;
    } else if (this.socket.writable) {
      this.socket.write(errorResponse(code, text, 'FATAL'));
    }
    this.close();
  }

  close(): void {
    if (this.phase === 'closed') return;
    const relayed = this.phase === 'relayed';
    this.phase = 'closed';
    this.ctx.sessions.delete(this.processId);
    if (relayed) {
      // The relay owns both sockets; it says when they are closed (relayClosed).
      if (this.relayId) relay.closeRelayed(this.relayId);
      return;
    }
    this.upstream?.close();
    this.socket.end();
  }
}
