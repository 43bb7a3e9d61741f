/** `startDemo` (what `custos serve --demo` runs) and the `custos dataproxy` command with real clients. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDemo } from '../../src/dataproxy/index.ts';
import type { DataProxyAuditEvent } from '../../src/model/index.ts';
import { InProcessSink } from '../../src/ingest/index.ts';
import type { LogEntry } from '../../src/model/index.ts';
import { ADMIN, startTestStore } from '../helpers/store.ts';
import { psql } from './helpers.ts';

/** The port `custos dataproxy` says it listens on (stderr). */
function listeningPort(child: ChildProcessWithoutNullStreams | ChildProcess): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let err = '';
    const timer = setTimeout(() => reject(new Error(`no listening line: ${err}`)), 30_000);
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /listening on [^:]+:(\d+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
  });
}

test('startDemo: events at once in a real store, and psql can connect to the URL it prints', async () => {
  const store = await startTestStore();
  const demo = await startDemo({ sink: new InProcessSink(store.server.service, 'default'), project: 'demo', listen: '127.0.0.1:0' });
  try {
    let entries: LogEntry[] = [];
    for (let tries = 0; tries < 100 && entries.length < 4; tries++) {
      await new Promise((r) => setTimeout(r, 100));
      entries = (await store.list(ADMIN, { filter: 'logName="projects/demo/logs/data-proxy-audit"', orderBy: 'timestamp asc' })).body.entries;
    }
    const actions = entries.map((e) => (e.jsonPayload as unknown as DataProxyAuditEvent).header.event.action);
    assert.equal(actions[0], 'user.authentication');
    assert.ok(actions.filter((a) => a === 'policy.resolution').length >= 3);
    assert.deepEqual(entries[0]!.categories, ['authenticationCheck', 'userLogin']);
    const out = await psql(demo.url, 'select id, firstname, lastname, salary from library.authors order by id');
    const rows = out.split('\n').map((l) => l.split('|'));
    assert.deepEqual(rows.map((r) => r[0]), ['1', '2', '4', '5', '6'], 'the AAAAA row is filtered');
    assert.ok(rows.every((r) => !['Ada', 'Alan', 'Grace', 'Edsger', 'Barbara'].includes(r[1]!)));
    assert.deepEqual(rows.map((r) => r[3]), ['52000.00', '61000.00', '', '', '80100.00']);
  } finally {
    await demo.stop();
    await store.close();
  }
});

test('custos dataproxy --server writes its events into a real store, with their audit categories', async () => {
  const store = await startTestStore();
  const child = spawn(process.execPath, ['bin/custos.js', 'dataproxy', '--config', 'test/fixtures/dataproxy/embedded.yaml', '--listen', '127.0.0.1:0', '--server', store.server.url, '--token', ADMIN, '--project', 'acme'], {
    stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, CUSTOS_LOG_LEVEL: 'warn' },
  });
  try {
    const port = await listeningPort(child);
    await psql(`postgresql://proxy-user:s3cret@127.0.0.1:${port}/acmedb?sslmode=disable`, 'select count(*) from library.authors');
    let entries: LogEntry[] = [];
    for (let tries = 0; tries < 100 && entries.length < 2; tries++) {
      await new Promise((r) => setTimeout(r, 100));
      entries = (await store.list(ADMIN, { filter: 'logName="projects/acme/logs/data-proxy-audit"', orderBy: 'timestamp asc' })).body.entries;
    }
    assert.deepEqual(entries.map((e) => (e.jsonPayload as unknown as DataProxyAuditEvent).header.event.action), ['user.authentication', 'policy.resolution']);
    assert.ok(entries[1]!.categories.includes('dataExport'), `policy.resolution categories: ${entries[1]!.categories.join(',')}`);

    // One session, three queries: the login event pairs with the first query, each later query has its own pair.
    await psql(`postgresql://proxy-user:s3cret@127.0.0.1:${port}/acmedb?sslmode=disable`, 'select count(*) from library.authors',
      ['-c', 'select lastname from library.authors where id = 1', '-c', 'select 1']);
    for (let tries = 0; tries < 100 && entries.length < 8; tries++) {
      await new Promise((r) => setTimeout(r, 100));
      entries = (await store.list(ADMIN, { filter: 'logName="projects/acme/logs/data-proxy-audit"', orderBy: 'timestamp asc' })).body.entries;
    }
    const session = entries.slice(2).map((e) => ({ event: e.jsonPayload as unknown as DataProxyAuditEvent, categories: e.categories }));
    assert.deepEqual(session.map((e) => e.event.header.event.action), Array(3).fill(['user.authentication', 'policy.resolution']).flat());
    const correlationIds = session.map((e) => e.event.attachments[0]!.correlationId);
    assert.deepEqual(correlationIds.filter((_, i) => i % 2 === 1), correlationIds.filter((_, i) => i % 2 === 0), 'each pair is linked');
    assert.equal(new Set(correlationIds).size, 3, 'pairs are told apart');
    assert.deepEqual(session[0]!.categories, ['authenticationCheck', 'userLogin'], 'the login event');
    // the later checks are not logins, and the store derives none for them (src/model/categories.ts)
    for (const i of [2, 4]) assert.deepEqual(session[i]!.categories, ['authenticationCheck']);
  } finally {
    child.kill('SIGKILL');
    await store.close();
  }
});

test('custos dataproxy --config … --log-file writes NDJSON events; SIGTERM stops it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'dp-cli-'));
  const logFile = join(dir, 'events.ndjson');
  const child = spawn(process.execPath, ['bin/custos.js', 'dataproxy', '--config', 'test/fixtures/dataproxy/embedded.yaml', '--listen', '127.0.0.1:0', '--log-file', logFile], {
    stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, CUSTOS_LOG_LEVEL: 'warn' },
  });
  try {
    const port = await listeningPort(child);
    const out = await psql(`postgresql://proxy-user:s3cret@127.0.0.1:${port}/acmedb?sslmode=disable`, 'select count(*) from library.authors');
    assert.equal(out, '5');
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
    const events = readFileSync(logFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as DataProxyAuditEvent);
    assert.deepEqual(events.map((e) => e.header.event.action), ['user.authentication', 'policy.resolution']);
    assert.equal(events[1]!.attachments[0]!.request?.query, 'select count(*) from library.authors');
  } finally {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
