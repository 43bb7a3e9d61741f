/** Shared by the data proxy tests: a throw-away database on the real PostgreSQL, a proxy in front of it, real clients. */
import { execFile } from 'node:child_process';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import type { DataProxyAuditEvent, LogEntryInput } from '../../src/model/index.ts';
import { BatchingSink, type EntrySink } from '../../src/ingest/sink.ts';
import { AUTHORS_PRIVACY_POLICY, buildConfig, startDataProxy, type RunningDataProxy } from '../../src/dataproxy/index.ts';
import { DEMO_SQL } from '../../src/dataproxy/demo-data.ts';

const run = promisify(execFile);
export const ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/test';

export async function createDatabase(prefix: string, sql = DEMO_SQL): Promise<{ name: string; url: string; drop(): Promise<void> }> {
  const name = `${prefix}_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = `postgres://postgres@127.0.0.1:5432/${name}`;
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  await db.query(sql);
  await db.end();
  return {
    name,
    url,
    async drop() {
      const a = new pg.Client({ connectionString: ADMIN_URL });
      await a.connect();
      await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await a.end();
    },
  };
}

/** Collects what the proxy writes to the store. */
export class MemorySink implements EntrySink {
  entries: LogEntryInput[] = [];
  async write(entries: LogEntryInput[]): Promise<void> {
    this.entries.push(...entries);
  }
  async close(): Promise<void> {}
}

export const BASE_CONFIG = {
  catalog: 'acmedb',
  tenant: 'fff7a844-f732-4a65-8280-912eae8eb8d0',
  dataPlane: { id: '01234567-89ab-cdef-0123-456789abcdef', namespace: 'dpp-proxy', pod: 'dynamic-proxy-b48ad3d7-7b7c-431f-ad5d-633e5641c0cd-59c677blq52m' },
  connection: { id: 'conn-1', name: 'acme-postgres' },
  project: { id: '5a078d49-1bc3-4a6f-9caa-1d622f18e7cc', name: 'analytics' },
  tokenization: { secret: 'test-tokenization-secret-0123456789' },
  users: [
    { name: 'proxy-user', password: 's3cret', groups: ['analysts'] },
    { name: 'admin', password: 'adminpw', groups: [] },
  ],
};

export interface TestProxy {
  proxy: RunningDataProxy;
  sink: MemorySink;
  batching: BatchingSink;
  conn(user?: string, password?: string): string;
  /** Events written so far (flushes first). */
  events(): Promise<DataProxyAuditEvent[]>;
  stop(): Promise<void>;
}

/**
 * Events go both to the store (`sink`) and to an NDJSON file; `events()` checks that the file holds the same
 * events, byte for byte as `JSON.stringify` writes them (the file's lines are serialised from templates).
 */
export async function startTestProxy(upstream: string, config: Record<string, unknown>, options: { relay?: boolean } = {}): Promise<TestProxy> {
  const cfg = await buildConfig({ ...BASE_CONFIG, ...config }, 'test config');
  const sink = new MemorySink();
  const batching = new BatchingSink(sink, { flushMs: 10 });
  const dir = mkdtempSync(join(tmpdir(), 'dp-test-'));
  const logFile = join(dir, 'events.ndjson');
  const proxy = await startDataProxy({ config: cfg, listen: '127.0.0.1:0', upstream, sink: batching, logFile, project: 'test', relay: options.relay });
  return {
    proxy,
    sink,
    batching,
    conn: (user = 'proxy-user', password = user === 'admin' ? 'adminpw' : 's3cret') =>
      `postgresql://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${proxy.port}/acmedb?sslmode=disable`,
    async events() {
      await batching.flush();
      const expected = sink.entries.map((e) => JSON.stringify(e.jsonPayload) + '\n').join('');
      // The file is written every 50 ms.
      for (let i = 0; i < 100 && readFileSync(logFile).length < Buffer.byteLength(expected); i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(readFileSync(logFile, 'utf8'), expected, 'the NDJSON file holds the events the store got');
      return sink.entries.map((e) => e.jsonPayload as unknown as DataProxyAuditEvent);
    },
    async stop() {
      await proxy.stop();
      await batching.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** psql as a real client: unaligned, tuples only, stop on error. Resolves with stdout, or rejects with stderr. */
export async function psql(conn: string, sql: string, extra: string[] = []): Promise<string> {
  const { stdout } = await run('psql', [conn, '-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-c', sql, ...extra], { timeout: 30_000 });
  return stdout.trim();
}

/** psql expecting failure: resolves with stderr. */
export async function psqlError(conn: string, sql: string): Promise<string> {
  try {
    const out = await psql(conn, sql);
    throw new Error(`expected an error, got: ${out}`);
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    if (e.stderr === undefined) throw err;
    return e.stderr;
  }
}

export async function pgbench(args: string[], env: Record<string, string> = {}): Promise<{ stdout: string; stderr: string }> {
  return run('pgbench', args, { timeout: 60_000, env: { ...process.env, ...env } });
}

/** Runs one query through the proxy with node-postgres (extended protocol) and returns the rows. */
export async function query(conn: string, sql: string, params: unknown[] = []): Promise<Record<string, unknown>[]> {
  const c = new pg.Client({ connectionString: conn });
  await c.connect();
  try {
    return (await c.query(sql, params)).rows;
  } finally {
    await c.end();
  }
}

/** The sample policy, plus dropping e-mail addresses. */
export const SEED_POLICY = {
  ...AUTHORS_PRIVACY_POLICY,
  rules: [
    ...AUTHORS_PRIVACY_POLICY.rules,
    { id: 'r-4', name: 'no e-mail', condition: { groups: ['analysts'] }, fields: [{ schema: 'library', table: 'authors', field: 'email' }],
      transformation: { drop: {} } },
  ],
};

/** Raw values of the demo table a masked user must never see. */
export const RAW_SECRETS = ['Ada', 'Alan', 'Grace', 'Edsger', 'Barbara', 'AAAAA', 'Hidden', '99999', '70500', '58250', 'ada@example.org', 'hidden@example.org'];
