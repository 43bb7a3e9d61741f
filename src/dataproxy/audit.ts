/**
 * Seed 003's audit events, built field for field as its examples print them: per query a `user.authentication` and
 * a `policy.resolution` sharing a correlationId (the login's authentication event is the first query's), FAILURE
 * events for a wrong password, a failed policy retrieval and a refused query.
 * The seed's examples differ by deployment (Kubernetes node vs data plane as target, verbose vs not); the rules
 * followed here are written beside each builder. Events are written as NDJSON and/or as LogEntries to the store.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { closeSync, createWriteStream, openSync, type WriteStream } from 'node:fs';
import { logName, LOG_IDS, type AuditField, type AuditTransformation, type DataProxyAuditEvent, type LogEntryInput, type Severity, type SingleFieldTransformation } from '../model/index.ts';
import type { BatchingSink } from '../ingest/sink.ts';
import type { DataProxyConfig, FieldConfig, SingleFieldTransformationConfig } from './config.ts';
import type { PolicyConfig } from './config.ts';
import type { Principal, TablePlan } from './policy.ts';
import { parseExpression, type Node } from './sql.ts';
import * as relay from './relay.ts';

export interface QueryAudit {
  /** The request as the seed reports it: `{query}` or `{metadata}`. */
  request: { query: string } | { metadata: string };
  tables: TablePlan[];
  policies: PolicyConfig[];
}

type Header = DataProxyAuditEvent['header'];

/** An event's fresh id and time, shared by its file line and its LogEntry. */
export interface EventStamp {
  id: string;
  eventTime: string;
}

/**
 * Placeholders for a template's varying values: random per process, so no configured name or query can contain
 * them. They are only ever written into the template, never into an event.
 */
const SLOT_NONCE = randomBytes(8).toString('hex');
const slot = (name: string): string => `custos-slot-${name}-${SLOT_NONCE}`;
const SLOT_PATTERN = new RegExp(`"custos-slot-([a-zA-Z]+)-${SLOT_NONCE}"`);

/**
 * One event's NDJSON line as the UTF-8 text between its varying values (`text[i]` precedes `slots[i]`, the last
 * one ends the line) and which value goes into each gap.
 */
export interface LineTemplate {
  userId: string;
  userName: string;
  text: Buffer[];
  slots: ('id' | 'eventTime' | 'correlationId' | 'query')[];
  /** Bytes of `text`. */
  bytes: number;
  hasQuery: boolean;
}

let lastMillis = 0;
let lastTime = '';
/** ISO-8601 now; one Date formatting per millisecond however many events share it. */
function eventTimeNow(): string {
  const now = Date.now();
  if (now !== lastMillis) {
    lastMillis = now;
    lastTime = new Date(now).toISOString();
  }
  return lastTime;
}

export function newStamp(): EventStamp {
  return { id: randomUUID(), eventTime: eventTimeNow() };
}

export class AuditEvents {
  /** requestData depends only on the tables a (cached) rewrite reads: built once per rewrite, shared read-only. */
  private readonly requestDataCache = new WeakMap<TablePlan[], Record<string, unknown>>();
  /** policy.resolution line templates by the (cached) rewrite they report; see `policyResolvedTemplate`. */
  private readonly lineTemplates = new WeakMap<object, LineTemplate>();
  /** user.authentication line templates by session principal; see `authenticationSucceededTemplate`. */
  private readonly authenticationTemplates = new WeakMap<Principal, LineTemplate>();

  constructor(private readonly config: DataProxyConfig) {}

  private ip(sourceIp: string | null): string | null {
    return this.config.audit.reportSourceIp ? sourceIp : null;
  }

  private header(action: string, initiator: Header['initiator'], status: Header['status'], target: Header['target'], stamp = newStamp()): Header {
    return {
      id: stamp.id,
      event: { eventTime: stamp.eventTime, eventType: 'ACTIVITY', action },
      initiator,
      observer: { id: 'target' },
      status,
      target,
      // Every example in the seed carries WARNING, whatever its action.
      severity: 'WARNING',
    };
  }

  /** The Kubernetes node when the data plane runs on one (seed: `service/compute`), else the data plane. */
  private queryTarget(): Header['target'] {
    const dp = this.config.dataPlane;
    return dp.node ? { id: dp.node, typeURI: 'service/compute' } : { id: dp.id, typeURI: 'data_plane' };
  }

  private source(): { source?: { namespace?: string; pod?: string } } {
    const { namespace, pod } = this.config.dataPlane;
    return namespace || pod ? { source: { ...(namespace ? { namespace } : {}), ...(pod ? { pod } : {}) } } : {};
  }

  /** At login, and again for each later query of the session (seed 003: two events per query). */
  authenticationSucceeded(who: Principal, correlationId: string, stamp = newStamp()): DataProxyAuditEvent {
    const project = this.config.project.id;
    return {
      header: this.header('user.authentication', { id: who.id, typeURI: 'User', tenant: this.config.tenant },
        { outcome: 'SUCCESS' }, { id: this.config.dataPlane.node ?? this.config.dataPlane.id, typeURI: 'service/compute' }, stamp),
      attachments: [{
        ...this.source(),
        correlationId,
        requestData: { context: { project: { id: project }, requestAttributes: { 'request.project': project } } },
      }],
    };
  }

  authenticationFailed(userName: string, sourceIp: string | null, reason: string): DataProxyAuditEvent {
    return {
      header: this.header('user.authentication', { id: userName, typeURI: 'User', tenant: this.config.tenant, sourceIp: this.ip(sourceIp) },
        { outcome: 'FAILURE', reason: { message: `Received error while trying to authenticate username ${userName}: ${reason}` } },
        { id: this.config.dataPlane.id, typeURI: 'data_plane' }),
      attachments: [],
    };
  }

  policyRetrievalFailed(who: Principal, sourceIp: string | null, message: string): DataProxyAuditEvent {
    return {
      header: this.header('policy.resolution', { id: who.id, typeURI: 'User', tenant: this.config.tenant, sourceIp: this.ip(sourceIp) },
        { outcome: 'FAILURE', reason: { message } }, { id: this.config.dataPlane.id, typeURI: 'data_plane' }),
      attachments: [],
    };
  }

  queryRefused(who: Principal, sourceIp: string | null, correlationId: string, request: QueryAudit['request'], message: string): DataProxyAuditEvent {
    return {
      header: this.header('policy.resolution', { id: who.id, typeURI: 'User', tenant: this.config.tenant, sourceIp: this.ip(sourceIp) },
        { outcome: 'FAILURE', reason: { message } }, this.queryTarget()),
      attachments: [{ ...this.source(), ...(this.config.audit.verbose ? { userId: who.name, request } : {}), correlationId }],
    };
  }

  /**
   * Non-verbose: transformations name their fields only. Verbose adds the user, the request and each
   * transformation's parameters; a metadata request's status has no `reason` and no `responseData`, as printed.
   */
  policyResolved(who: Principal, correlationId: string, q: QueryAudit, stamp = newStamp()): DataProxyAuditEvent {
    const verbose = this.config.audit.verbose;
    const metadata = 'metadata' in q.request;
    let requestData: Record<string, unknown> | undefined = this.config.audit.includeContext ? undefined : this.requestDataCache.get(q.tables);
    if (!requestData) {
      const transformations = this.transformations(q, verbose);
      const filters = q.tables.flatMap((t) => t.filters.map((f) => ({ field: this.field(f.field), expression: f.expression })));
      requestData = { transformations, filters };
      if (this.config.audit.includeContext) Object.assign(requestData, this.context(who, q));
      else this.requestDataCache.set(q.tables, requestData);
    }
    return {
      header: this.header('policy.resolution', { id: who.id, typeURI: 'User', tenant: this.config.tenant },
        metadata && verbose ? { outcome: 'SUCCESS' } : { outcome: 'SUCCESS', reason: null }, this.queryTarget(), stamp),
      attachments: [{
        ...this.source(),
        ...(verbose ? { userId: who.name, request: q.request } : {}),
        correlationId,
        ...(metadata && verbose ? {} : { responseData: null }),
        requestData,
      }],
    };
  }

  /**
   * The template of `policyResolved`'s NDJSON line for `key` (a cached rewrite, which fixes the tables, the request
   * kind and the user): the event is built once with placeholders and serialised, so a query then only joins the
   * bytes around its id, time, correlationId and query (`AuditLog.templated`). The line is exactly
   * `JSON.stringify(policyResolved(…))`: same fields, same order, without building and walking the event.
   */
  policyResolvedTemplate(who: Principal, q: QueryAudit, key: object): LineTemplate {
    let template = this.lineTemplates.get(key);
    if (template && template.userId === who.id && template.userName === who.name) return template;
    const request = 'query' in q.request ? { query: slot('query') } : q.request;
    template = lineTemplate(who, this.policyResolved(who, slot('correlationId'), { ...q, request }, { id: slot('id'), eventTime: slot('eventTime') }));
    this.lineTemplates.set(key, template);
    return template;
  }

  /**
   * The template of `authenticationSucceeded`'s NDJSON line for a session's principal, made at its second query:
   * only the id, time and correlationId vary from one query to the next.
   */
  authenticationSucceededTemplate(who: Principal): LineTemplate {
    let template = this.authenticationTemplates.get(who);
    if (!template) {
      template = lineTemplate(who, this.authenticationSucceeded(who, slot('correlationId'), { id: slot('id'), eventTime: slot('eventTime') }));
      this.authenticationTemplates.set(who, template);
    }
    return template;
  }

  private field(f: FieldConfig): AuditField {
    return {
      ...(f.assetId ? { assetId: f.assetId } : {}),
      ...(f.assetName ? { assetName: f.assetName } : {}),
      catalog: f.catalog ?? this.config.catalog,
      schema: f.schema,
      table: f.table,
      field: f.field,
    };
  }

  /** One entry per applied rule, in configuration order, naming the rule's fields in the tables read. */
  private transformations(q: QueryAudit, verbose: boolean): AuditTransformation[] {
    const applied = new Map<string, { rule: TablePlan['fields'] extends Map<string, infer R> ? R : never; fields: FieldConfig[] }>();
    for (const t of q.tables) {
      for (const r of t.fields.values()) {
        const key = `${r.policy.id}\0${r.rule.id}`;
        const entry = applied.get(key) ?? { rule: r, fields: [] };
        entry.fields.push(r.field);
        applied.set(key, entry);
      }
    }
    const order: string[] = [];
    for (const p of q.policies) for (const r of p.rules) order.push(`${p.id}\0${r.id}`);
    const sorted = [...applied.entries()].sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0]));
    return sorted.map(([, { rule, fields }]) => {
      const entry: AuditTransformation = { field: fields.map((f) => this.field(f)) };
      if (!verbose) return entry;
      const t = rule.transformation;
      if ('ifAndElseIfs' in t) {
        entry.cellLevelTransformation = {
          ifAndElseIfs: t.ifAndElseIfs.map((b) => ({
            logicalExpression: { expression: b.expression, field: columnsOf(b.expression).map((c) => this.field({ ...rule.field, field: c })) },
            transformation: { singleFieldTransformation: single(b.transformation) },
          })),
          else: { singleFieldTransformation: single(t.else) },
        };
      } else {
        entry.singleFieldTransformation = single(t);
      }
      return entry;
    });
  }

  private context(who: Principal, q: QueryAudit): Record<string, unknown> {
    const groupIds = who.groups.map((g) => this.config.groups.find((x) => x.name === g)?.id ?? g);
    const fieldTriggers = q.tables.flatMap((t) => [...t.fields.values()].map((r) => ({
      fields: [this.field(r.field)],
      trigger: { policyId: r.policy.id, policyName: r.policy.name, ruleCondition: r.rule.condition, ruleId: r.rule.id, ruleName: r.rule.name },
    })));
    return {
      context: {
        connection: { id: this.config.connection.id, name: this.config.connection.name },
        groupIds,
        project: { id: this.config.project.id, ...(this.config.project.name ? { name: this.config.project.name } : {}) },
        request: q.request,
        userId: who.id,
        userName: who.name,
      },
      fieldTriggers,
      request: q.request,
      dataPlane: { id: this.config.dataPlane.id },
      rlacFilterBehaviour: this.config.rlacFilterBehaviour,
    };
  }
}

/** An event built with slot placeholders, serialised as its file line and cut at the slots. */
function lineTemplate(who: Principal, event: DataProxyAuditEvent): LineTemplate {
  const parts = (JSON.stringify(event) + '\n').split(SLOT_PATTERN);
  const text = parts.filter((_, i) => i % 2 === 0).map((t) => Buffer.from(t, 'utf8'));
  const slots = parts.filter((_, i) => i % 2 === 1) as LineTemplate['slots'];
  const bytes = text.reduce((n, b) => n + b.length, 0);
  return { userId: who.id, userName: who.name, text, slots, bytes, hasQuery: slots.includes('query') };
}

function single(t: SingleFieldTransformationConfig): SingleFieldTransformation {
  return { ...t } as SingleFieldTransformation;
}

/** Column names an expression reads (the seed's `logicalExpression.field`). */
function columnsOf(expression: string): string[] {
  const out = new Set<string>();
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) return v.forEach(walk);
    if (typeof v !== 'object' || v === null) return;
    const ref = (v as Node)['ColumnRef'] as { fields?: { String?: { sval: string } }[] } | undefined;
    const last = ref?.fields?.[ref.fields.length - 1]?.String?.sval;
    if (last) out.add(last);
    Object.values(v).forEach(walk);
  };
  walk(parseExpression(expression));
  return [...out];
}

/**
 * `JSON.stringify(text)` as UTF-8 at `at`, returning its length: printable ASCII without `"` or `\\` is copied a
 * byte a character (ids, times, most queries); anything else goes through JSON.stringify.
 */
function writeJsonString(chunk: Buffer, at: number, text: string): number {
  chunk[at] = 0x22;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || c === 0x22 || c === 0x5c || c > 0x7e) return chunk.write(JSON.stringify(text), at, 'utf8');
    chunk[at + 1 + i] = c;
  }
  chunk[at + 1 + text.length] = 0x22;
  return text.length + 2;
}

const FLUSH_BYTES = 256 * 1024;
const CHUNK_BYTES = FLUSH_BYTES + 64 * 1024;

const SEVERITY: Record<Header['severity'], Severity> = { NORMAL: 'INFO', WARNING: 'WARNING', CRITICAL: 'CRITICAL' };

/**
 * Where events go: an NDJSON file (or stdout) and/or the store through a batching sink. File lines are gathered
 * and written every 50 ms or 256 KiB: one write per query would cost more than forwarding the query.
 *
 * With the native relay and no store, the file is written by the relay's thread (`nativeLog`): relayed sessions'
 * cached statements have their lines filled in there from this file's templates, and the lines made here are
 * handed to it, so that one writer keeps each session's lines in order.
 */
export class AuditLog {
  private readonly file: WriteStream | NodeJS.WriteStream | undefined;
  /** The relay's id for the file (0: written here), and the descriptor it writes to. */
  readonly nativeLog: number = 0;
  private readonly nativeFd: number = -1;
  /** Lines not yet written, as UTF-8 in `chunk[0, used)`; a written chunk belongs to the stream, so a fresh one follows. */
  private chunk = Buffer.allocUnsafe(CHUNK_BYTES);
  private used = 0;
  private timer: NodeJS.Timeout | undefined;
  constructor(private readonly options: { logFile?: string; sink?: BatchingSink; project: string; relay?: boolean }) {
    if (options.logFile && !options.sink && options.relay) {
      this.nativeFd = options.logFile === '-' ? 1 : openSync(options.logFile, 'a');
      this.nativeLog = relay.openLog(this.nativeFd, options.logFile);
    } else if (options.logFile === '-') {
      this.file = process.stdout;
    } else if (options.logFile) {
      this.file = createWriteStream(options.logFile, { flags: 'a' });
    }
  }

  emit(event: DataProxyAuditEvent, categories: string[]): void {
    if (this.writesLines) this.line(JSON.stringify(event) + '\n');
    if (this.options.sink) this.entry(event, categories);
  }

  /** Whether events go to a file (as lines) and to the store (as LogEntries): a producer builds only what is used. */
  get writesLines(): boolean {
    return this.file !== undefined || this.nativeLog !== 0;
  }
  get writesEntries(): boolean {
    return this.options.sink !== undefined;
  }

  private line(text: string): void {
    this.reserve(Buffer.byteLength(text));
    this.used += this.chunk.write(text, this.used, 'utf8');
    this.written();
  }

  /** A line from its template: the template's bytes with the stamp, the correlationId and the query between. */
  templated(t: LineTemplate, stamp: EventStamp, correlationId: string, query: string): void {
    // An upper bound: a UTF-16 unit is at most 6 bytes in JSON (`\u001f`), plus the quotes.
    this.reserve(t.bytes + t.slots.length * (2 + 6 * Math.max(stamp.id.length, stamp.eventTime.length, correlationId.length, t.hasQuery ? query.length : 0)));
    const chunk = this.chunk;
    let at = this.used;
    for (let i = 0; i < t.slots.length; i++) {
      const text = t.text[i]!;
      chunk.set(text, at);
      at += text.length;
      const name = t.slots[i];
      at += writeJsonString(chunk, at, name === 'id' ? stamp.id : name === 'eventTime' ? stamp.eventTime : name === 'correlationId' ? correlationId : query);
    }
    const last = t.text[t.slots.length]!;
    chunk.set(last, at);
    this.used = at + last.length;
    this.written();
  }

  private reserve(bytes: number): void {
    if (this.used + bytes <= this.chunk.length) return;
    this.flushFile();
    if (bytes > this.chunk.length) this.chunk = Buffer.allocUnsafe(bytes);
  }

  private written(): void {
    if (this.used >= FLUSH_BYTES) this.flushFile();
    else this.timer ??= setTimeout(this.flushLater, 50);
  }

  private readonly flushLater = (): void => this.flushFile();

  entry(event: DataProxyAuditEvent, categories: string[]): void {
    this.options.sink?.add(toLogEntry(event, categories, this.options.project));
  }

  /** Hands the gathered lines on now (a relayed session's lines must precede what the relay writes for it next). */
  flushFile(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.used === 0) return;
    if (this.nativeLog) {
      // The relay copies the bytes: the chunk is reused.
      relay.appendLog(this.nativeLog, this.chunk.subarray(0, this.used));
    } else if (this.file) {
      this.file.write(this.chunk.subarray(0, this.used));
      this.chunk = Buffer.allocUnsafe(CHUNK_BYTES);
    }
    this.used = 0;
  }

  async close(): Promise<void> {
    this.flushFile();
    await this.options.sink?.flush();
    if (this.nativeLog) {
      await relay.closeLog(this.nativeLog);
      if (this.nativeFd !== 1) closeSync(this.nativeFd);
    }
    const file = this.file;
    if (file && file !== process.stdout) await new Promise<void>((resolve) => (file as WriteStream).end(resolve));
  }
}

export function toLogEntry(event: DataProxyAuditEvent, categories: string[], project: string): LogEntryInput {
  return {
    insertId: event.header.id,
    logName: logName(project, LOG_IDS.dataProxyAudit),
    timestamp: event.header.event.eventTime,
    severity: SEVERITY[event.header.severity],
    resource: { type: 'custos_data_proxy', labels: {} },
    labels: { action: event.header.event.action, outcome: event.header.status.outcome },
    categories,
    jsonPayload: event as unknown as Record<string, unknown>,
  };
}
