import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startDemo as startDataProxyDemo } from '../dataproxy/index.ts';
import { startDemo as startEgressDemo } from '../egress/index.ts';
import { InProcessSink } from '../ingest/index.ts';
import { LOG_IDS, logName, type LogEntryInput, type PlatformAuditEvent } from '../model/index.ts';
import { startDemo as startNetpolDemo } from '../netpol/index.ts';
import { componentLogger } from '../telemetry/index.ts';
import type { RunningServer } from './index.ts';

const log = componentLogger('demo');

/** Seed 001's commonly searched activity, as a handful of users of a platform would produce it. */
const PLATFORM_ACTIVITY: PlatformAuditEvent[] = [
  { action: 'user.login', outcome: 'SUCCESS', actor: { userId: 'u-1042', username: 'alice', sessionId: 's-7f3a', realm: 'customer-network' } },
  { action: 'dataset.create', outcome: 'SUCCESS', actor: { userId: 'u-1042', username: 'alice' }, target: { id: 'ri.dataset.sales-2026', type: 'dataset' }, parameters: { spaceRid: 'ri.space.sales', organizationMarkingIds: ['acme'] } },
  { action: 'dataset.export', outcome: 'SUCCESS', actor: { userId: 'u-2001', username: 'bob' }, target: { id: 'ri.dataset.sales-2026', type: 'dataset' }, parameters: { size: 18_432_112 } },
  { action: 'file.upload', outcome: 'SUCCESS', actor: { userId: 'u-2001', username: 'bob' }, target: { id: 'ri.file.q3.csv' }, parameters: { fileName: 'q3.csv', fileType: 'text/csv', containingFolderId: 'ri.folder.finance', size: 52_113 } },
  { action: 'token.generate', outcome: 'SUCCESS', actor: { userId: 'u-1042', username: 'alice' }, parameters: { tokenId: 't-91', tokenTtl: 'PT1H', tokenType: 'JWT' } },
  { action: 'user.login', outcome: 'FAILURE', actor: { username: 'mallory', realm: 'palantir', sourceIp: '203.0.113.9' }, reason: 'bad credentials' },
  { action: 'dataset.delete', outcome: 'SUCCESS', actor: { userId: 'u-3003', username: 'carol' }, target: { id: 'ri.dataset.hr-salaries', type: 'dataset' } },
  { action: 'user.logout', outcome: 'SUCCESS', actor: { userId: 'u-1042', username: 'alice', sessionId: 's-7f3a' } },
];

function platformEntry(project: string, event: PlatformAuditEvent): LogEntryInput {
  return {
    logName: logName(project, LOG_IDS.audit),
    severity: event.outcome === 'FAILURE' || event.action.endsWith('.delete') ? 'WARNING' : 'INFO',
    resource: { type: 'custos_platform', labels: { service: event.action.split('.')[0]! } },
    labels: { outcome: event.outcome },
    jsonPayload: { ...event },
  };
}

/**
 * `custos serve --demo`: every producer runs on demo data through its real code and writes into this store over
 * the in-process ingest client, so a new user sees every kind of record at once.
 */
export async function startDemo(server: RunningServer, project: string): Promise<{ stop(): Promise<void>; describe: string[] }> {
  const sink = new InProcessSink(server.service, 'default');
  const stops: (() => Promise<void>)[] = [];
  const describe: string[] = [];
  // On later starts the token exists only in the file the first start wrote (if it was not deleted).
  const token = server.adminToken ?? (await readFile(join(server.dataDir, 'admin-token'), 'utf8').catch(() => '')).trim();

  const netpol = await startNetpolDemo({ sink, project, cluster: 'demo', location: 'local' });
  stops.push(() => netpol.stop());
  describe.push('netpol: replaying a demo cluster\'s flows into projects/' + project + '/logs/policy-action');

  try {
    const egress = await startEgressDemo({ sink, project });
    stops.push(() => egress.stop());
    describe.push(`egress proxy: ${egress.proxyUrl}  (records in projects/${project}/logs/network-egress)`);
  } catch (err) {
    log.error({ err }, 'egress demo did not start');
  }
  try {
    const dataproxy = await startDataProxyDemo({ sink, project });
    stops.push(() => dataproxy.stop());
    describe.push(`data proxy: psql '${dataproxy.url}'  (events in projects/${project}/logs/data-proxy-audit)`);
  } catch (err) {
    log.error({ err }, 'dataproxy demo did not start');
  }

  let next = 0;
  const emit = () => {
    const event = PLATFORM_ACTIVITY[next++ % PLATFORM_ACTIVITY.length]!;
    sink.write([platformEntry(project, event)]).catch((err: unknown) => log.error({ err }, 'demo audit event not stored'));
  };
  for (let i = 0; i < PLATFORM_ACTIVITY.length; i++) emit();
  const timer = setInterval(emit, 5000);
  stops.push(async () => clearInterval(timer));

  if (token) describe.push(`demo admin token: export CUSTOS_TOKEN=${token}`);
  describe.push(
    `try: node bin/custos.js read --server ${server.url} 'jsonPayload.disposition="deny"' --format table`,
    `     node bin/custos.js read --server ${server.url} 'categories="userLogin"'`,
  );
  return {
    describe,
    stop: async () => {
      for (const stop of stops.reverse()) await stop().catch((err: unknown) => log.error({ err }, 'demo producer did not stop cleanly'));
    },
  };
}
