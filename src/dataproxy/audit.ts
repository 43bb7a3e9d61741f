/**
 * Seed 003's audit events, built field for field as its examples print them: `user.authentication` at login,
 * `policy.resolution` per query, FAILURE events for a wrong password, a failed policy retrieval and a refused query.
 * The seed's examples differ by deployment (Kubernetes node vs data plane as target, verbose vs not); the rules
 * followed here are written beside each builder. Events are written as NDJSON and/or as LogEntries to the store.
 */
import { randomUUID } from 'node:crypto';
import { createWriteStream, type WriteStream } from 'node:fs';
import { logName, LOG_IDS, type AuditField, type AuditTransformation, type DataProxyAuditEvent, type LogEntryInput, type Severity, type SingleFieldTransformation } from '../model/index.ts';
import type { BatchingSink } from '../ingest/sink.ts';
import type { DataProxyConfig, FieldConfig, SingleFieldTransformationConfig } from './config.ts';
import type { PolicyConfig } from './config.ts';
import type { Principal, TablePlan } from './policy.ts';
import { parseExpression, type Node } from './sql.ts';

export interface QueryAudit {
  /** The request as the seed reports it: `{query}` or `{metadata}`. */
  request: { query: string } | { metadata: string };
  tables: TablePlan[];
  policies: PolicyConfig[];
}

type Header = DataProxyAuditEvent['header'];

export class AuditEvents {
  /** requestData depends only on the tables a (cached) rewrite reads: built once per rewrite, shared read-only. */
  private readonly requestDataCache = new WeakMap<TablePlan[], Record<string, unknown>>();

  constructor(private readonly config: DataProxyConfig) {}

  private ip(sourceIp: string | null): string | null {
    return this.config.audit.reportSourceIp ? sourceIp : null;
  }

  private header(action: string, initiator: Header['initiator'], status: Header['status'], target: Header['target']): Header {
    return {
      id: randomUUID(),
      event: { eventTime: new Date().toISOString(), eventType: 'ACTIVITY', action },
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

  authenticationSucceeded(who: Principal, correlationId: string): DataProxyAuditEvent {
    const project = this.config.project.id;
    return {
      header: this.header('user.authentication', { id: who.id, typeURI: 'User', tenant: this.config.tenant },
        { outcome: 'SUCCESS' }, { id: this.config.dataPlane.node ?? this.config.dataPlane.id, typeURI: 'service/compute' }),
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
  policyResolved(who: Principal, correlationId: string, q: QueryAudit): DataProxyAuditEvent {
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
        metadata && verbose ? { outcome: 'SUCCESS' } : { outcome: 'SUCCESS', reason: null }, this.queryTarget()),
      attachments: [{
        ...this.source(),
        ...(verbose ? { userId: who.name, request: q.request } : {}),
        correlationId,
        ...(metadata && verbose ? {} : { responseData: null }),
        requestData,
      }],
    };
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

const SEVERITY: Record<Header['severity'], Severity> = { NORMAL: 'INFO', WARNING: 'WARNING', CRITICAL: 'CRITICAL' };

/**
 * Where events go: an NDJSON file (or stdout) and/or the store through a batching sink. File lines are gathered
 * and written every 50 ms or 256 KiB: one write per query would cost more than forwarding the query.
 */
export class AuditLog {
  private readonly file: WriteStream | NodeJS.WriteStream | undefined;
  private pending: string[] = [];
  private pendingBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  constructor(private readonly options: { logFile?: string; sink?: BatchingSink; project: string }) {
    if (options.logFile === '-') this.file = process.stdout;
    else if (options.logFile) this.file = createWriteStream(options.logFile, { flags: 'a' });
  }

  emit(event: DataProxyAuditEvent, categories: string[]): void {
    if (this.file) {
      const line = JSON.stringify(event);
      this.pending.push(line);
      this.pendingBytes += line.length;
      if (this.pendingBytes >= 256 * 1024) this.flushFile();
      else this.timer ??= setTimeout(() => this.flushFile(), 50);
    }
    if (this.options.sink) this.options.sink.add(toLogEntry(event, categories, this.options.project));
  }

  private flushFile(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.length === 0 || !this.file) return;
    this.file.write(this.pending.join('\n') + '\n');
    this.pending = [];
    this.pendingBytes = 0;
  }

  async close(): Promise<void> {
    this.flushFile();
    await this.options.sink?.flush();
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
