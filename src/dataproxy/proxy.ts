/**
 * The proxy as a whole: listener, shared state (catalog, policies, rewrite cache, sessions for CancelRequest),
 * the upstream, and where audit events go. `startDataProxy` is what the CLI and the demo call.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { createSecureContext, type SecureContext } from 'node:tls';
import pg from 'pg';
import { Counter } from 'prom-client';
import type { DataProxyAuditEvent } from '../model/index.ts';
import { componentLogger, registry, splitHostPort } from '../telemetry/index.ts';
import type { BatchingSink } from '../ingest/sink.ts';
import { AuditEvents, AuditLog, newStamp, type LineTemplate, type QueryAudit } from './audit.ts';
import { Catalog, type SqlRunner } from './catalog.ts';
import type { DataProxyConfig, PolicyConfig } from './config.ts';
import { maskedRelationSql, type MaskingKeys } from './masking.ts';
import { PolicySource, protectedTablesOf, resolvePolicies, type Principal, type Resolution, type TablePlan } from './policy.ts';
import { UnknownRelationError, type RewriteContext } from './rewrite.ts';
import { linesWritten, relayAvailable } from './relay.ts';
import { Session } from './session.ts';
import { parseStatements, type Node } from './sql.ts';
import { EmbeddedUpstream, PostgresUpstream, type Upstream } from './upstream.ts';
import { createDemoDatabase } from './demo-data.ts';

const log = componentLogger('dataproxy');

/** Events counted by action and outcome; handed to prom-client when scraped, so counting one is an addition. */
interface EventCount {
  action: string;
  outcome: string;
  count: number;
  reported: number;
}
const eventCounts = new Map<string, EventCount>();
function countFor(action: string, outcome: string): EventCount {
  const key = `${action}\0${outcome}`;
  let c = eventCounts.get(key);
  if (!c) eventCounts.set(key, (c = { action, outcome, count: 0, reported: 0 }));
  return c;
}
const resolvedCount = countFor('policy.resolution', 'SUCCESS');
const authenticatedCount = countFor('user.authentication', 'SUCCESS');
let relayedLinesCounted = 0;
/** A query's authentication is a check, not a login: the login's own event carries `userLogin`. */
const QUERY_AUTHENTICATION_CATEGORIES = ['authenticationCheck'];

new Counter({
  name: 'custos_dataproxy_audit_events_total',
  help: 'Data proxy audit events emitted, by action and outcome.',
  labelNames: ['action', 'outcome'] as const,
  registers: [registry],
  collect() {
    // Each line pair the relay wrote is a query's user.authentication and policy.resolution.
    const relayed = linesWritten();
    resolvedCount.count += relayed - relayedLinesCounted;
    authenticatedCount.count += relayed - relayedLinesCounted;
    relayedLinesCounted = relayed;
    for (const c of eventCounts.values()) {
      if (c.count === c.reported) continue;
      this.labels(c.action, c.outcome).inc(c.count - c.reported);
      c.reported = c.count;
    }
  },
});

/** A bounded map that forgets its oldest entries first. */
export class BoundedCache<V> {
  private readonly map = new Map<string, V>();
  constructor(private readonly max: number) {}
  get(key: string): V | undefined {
    return this.map.get(key);
  }
  set(key: string, value: V): void {
    if (this.map.size >= this.max) this.map.delete(this.map.keys().next().value!);
    this.map.set(key, value);
  }
}

export interface ProxyContext {
  config: DataProxyConfig;
  upstream: Upstream;
  catalog: Catalog;
  policies: PolicySource;
  events: AuditEvents;
  sessions: Map<number, Session>;
  cache: BoundedCache<unknown>;
  tls: SecureContext | undefined;
  /** Whether authenticated sessions move to the native relay (relay.ts). */
  relay: boolean;
  emit(event: DataProxyAuditEvent, categories: string[]): void;
  /** A query's SUCCESS policy.resolution event; `key` is the cached rewrite it reports (see `policyResolvedTemplate`). */
  policyResolved(who: Principal, correlationId: string, q: QueryAudit, key: object, categories: string[]): void;
  /** The SUCCESS user.authentication event of a query after the session's first (see `Session.queryCorrelationId`). */
  queryAuthenticated(who: Principal, correlationId: string): void;
  resolve(policies: PolicyConfig[], who: Principal): Resolution;
  rewriteContext(resolution: Resolution, who: Principal, policyVersion: number): RewriteContext;
  /**
   * When the native relay writes the NDJSON file (audit.ts): its id there, the templates the relay fills in for
   * cached statements, and a flush of the lines made here so that they precede the relay's next ones.
   */
  relayLog: {
    id: number;
    authentication(who: Principal): LineTemplate;
    resolution(who: Principal, q: QueryAudit, key: object): LineTemplate;
    flush(): void;
  } | undefined;
}

export interface DataProxyOptions {
  config: DataProxyConfig;
  /** Overrides `config.listen` (`HOST:PORT`; port 0 for an ephemeral one). */
  listen?: string;
  /** Overrides `config.upstream`: a postgres:// URL or `embedded`. */
  upstream?: string | Upstream;
  /** NDJSON audit events to this file, or `-` for stdout. */
  logFile?: string;
  /** LogEntries to the store. */
  sink?: BatchingSink;
  /** The Custos project of the LogEntries (`projects/P/logs/data-proxy-audit`). */
  project: string;
  /** Sessions move to the native relay after authentication (default: when it is built; see relay.ts). */
  relay?: boolean;
}

export interface RunningDataProxy {
  readonly host: string;
  readonly port: number;
  readonly upstream: Upstream;
  stop(): Promise<void>;
}

function catalogRunner(upstream: Upstream): SqlRunner {
  if (upstream instanceof EmbeddedUpstream) return async (sql) => (await upstream.db.query<Record<string, unknown>>(sql)).rows;
  const pgUpstream = upstream as PostgresUpstream;
  return async (sql) => {
    const client = new pg.Client({ connectionString: pgUpstream.url, application_name: 'custos-dataproxy-catalog' });
    await client.connect();
    try {
      return (await client.query(sql)).rows as Record<string, unknown>[];
    } finally {
      await client.end();
    }
  };
}

export async function startDataProxy(options: DataProxyOptions): Promise<RunningDataProxy> {
  const { config } = options;
  const upstreamSpec = options.upstream ?? config.upstream;
  const upstream: Upstream = typeof upstreamSpec !== 'string'
    ? upstreamSpec
    : upstreamSpec === 'embedded' ? new EmbeddedUpstream(await createDemoDatabase()) : new PostgresUpstream(upstreamSpec);
  const policies = new PolicySource(config.policies, config.policySource);
  const catalog = new Catalog(catalogRunner(upstream), () => protectedTablesOf(policies.known()));
  await catalog.load();

  let secret: Buffer;
  if (config.tokenization) secret = Buffer.from(config.tokenization.secret, 'utf8');
  else if (process.env['CUSTOS_TOKENIZATION_SECRET']) secret = Buffer.from(process.env['CUSTOS_TOKENIZATION_SECRET'], 'utf8');
  else {
    secret = randomBytes(32);
    log.warn('no tokenization secret configured (tokenization.secret or CUSTOS_TOKENIZATION_SECRET): consistent tokens change on restart');
  }
  const keys: MaskingKeys = { secret };
  // The embedded upstream has no socket to hand over.
  const useRelay = options.relay !== false && relayAvailable() && upstream.kind === 'postgres';
  const audit = new AuditLog({ logFile: options.logFile, sink: options.sink, project: options.project, relay: useRelay });
  const masked = new BoundedCache<Node>(10_000);
  const events = new AuditEvents(config);

  const ctx: ProxyContext = {
    config,
    upstream,
    catalog,
    policies,
    events,
    sessions: new Map(),
    cache: new BoundedCache(50_000),
    tls: config.tlsFiles ? createSecureContext({ cert: config.tlsFiles.cert, key: config.tlsFiles.key }) : undefined,
    relay: useRelay,
    emit(event, categories) {
      countFor(event.header.event.action, event.header.status.outcome).count++;
      audit.emit(event, categories);
    },
    policyResolved(who, correlationId, q, key, categories) {
      resolvedCount.count++;
      const stamp = newStamp();
      if (audit.writesLines) audit.templated(events.policyResolvedTemplate(who, q, key), stamp, correlationId, 'query' in q.request ? q.request.query : '');
      if (audit.writesEntries) audit.entry(events.policyResolved(who, correlationId, q, stamp), categories);
    },
    queryAuthenticated(who, correlationId) {
      authenticatedCount.count++;
      const stamp = newStamp();
      if (audit.writesLines) audit.templated(events.authenticationSucceededTemplate(who), stamp, correlationId, '');
      if (audit.writesEntries) audit.entry(events.authenticationSucceeded(who, correlationId, stamp), QUERY_AUTHENTICATION_CATEGORIES);
    },
    resolve: (list, who) => resolvePolicies(list, who, config.rlacFilterBehaviour),
    relayLog: audit.nativeLog ? {
      id: audit.nativeLog,
      authentication: (who) => events.authenticationSucceededTemplate(who),
      resolution: (who, q, key) => events.policyResolvedTemplate(who, q, key),
      flush: () => audit.flushFile(),
    } : undefined,
    rewriteContext(resolution, who, version): RewriteContext {
      return {
        catalog,
        resolution,
        maskedRelation(plan: TablePlan, only?: ReadonlySet<string>): Node {
          const columns = catalog.columnsOf(plan.key);
          if (!columns) throw new UnknownRelationError(plan.key);
          const visible = only ? columns.filter((c) => only.has(c.name)) : columns;
          const key = `${who.name}\0${version}\0${catalog.generation}\0${plan.key}\0${only ? visible.map((c) => c.name).join(',') : '*'}`;
          let node = masked.get(key);
          if (!node) {
            node = parseStatements(maskedRelationSql(plan, visible, keys, who))[0]!.stmt;
            masked.set(key, node);
          }
          return structuredClone(node);
        },
      };
    },
  };

  const listen = splitHostPort(options.listen ?? config.listen);
  const sockets = new Set<Socket>();
  const server: Server = createServer({ noDelay: true }, (socket: Socket) => {
    // Relayed sessions left Node's sockets (and the server's own count) but not the limit.
    let relayed = 0;
    for (const session of ctx.sessions.values()) if (session.relayed) relayed++;
    if (sockets.size + relayed >= config.limits.maxConnections) {
      socket.destroy();
      return;
    }
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    new Session(socket, ctx);
  });
  // Bounds connections in every phase, authentication included.
  server.maxConnections = config.limits.maxConnections;
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(listen.port, listen.host, resolve));
  const address = server.address() as { address: string; port: number };
  log.info({ listen: `${address.address}:${address.port}`, upstream: upstream.kind, relay: useRelay ? 'native' : 'node' }, 'data proxy listening');
  return {
    host: address.address,
    port: address.port,
    upstream,
    async stop() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of [...ctx.sessions.values()]) s.close();
      for (const socket of sockets) socket.destroy();
      await closed;
      await audit.close();
      if (upstream instanceof EmbeddedUpstream) await upstream.db.close();
    },
  };
}
