/**
 * `custos serve --demo`: the proxy on the embedded upstream, with the seed's demo table and the policies,
 * and a few queries run through it at once so the store shows real audit events from the first second.
 */
import pg from 'pg';
import { BatchingSink, type EntrySink } from '../ingest/sink.ts';
import { componentLogger } from '../telemetry/index.ts';
import { buildConfig } from './config.ts';
import { startDataProxy } from './proxy.ts';

export const DEMO_USER = 'proxy-user';
export const DEMO_PASSWORD = 's3cret';

/** The sample policy over the seed's `library.authors` table, as its config example writes it. */
export const AUTHORS_PRIVACY_POLICY = {
  id: '6c1f3a52-0d7e-4a4e-9f1b-1b2d3c4d5e6f',
  name: 'authors-privacy',
  rules: [
    { id: 'r-1', name: 'tokenize first names', condition: { groups: ['analysts'] }, fields: [{ schema: 'library', table: 'authors', field: 'firstname' }],
      transformation: { regex: { regex: '[A-Za-z]{1,15}', consistent: true, consistencyGroupId: 'names' } } },
    { id: 'r-2', name: 'keep last names', condition: { groups: ['analysts'] }, fields: [{ schema: 'library', table: 'authors', field: 'lastname' }],
      transformation: { retain: {} } },
    { id: 'r-3', name: 'hide salaries unless the row is a public figure', condition: { groups: ['analysts'] },
      fields: [{ schema: 'library', table: 'authors', field: 'salary' }],
      transformation: { ifAndElseIfs: [{ expression: 'public_figure = true', transformation: { retain: {} } }], else: { redactWithNull: {} } } },
  ],
  filters: [{ schema: 'library', table: 'authors', field: 'firstname', expression: "firstname <> 'AAAAA'" }],
};

export const DEMO_CONFIG = {
  catalog: 'acmedb',
  tenant: 'fff7a844-f732-4a65-8280-912eae8eb8d0',
  dataPlane: { id: '01234567-89ab-cdef-0123-456789abcdef', namespace: 'dpp-proxy', pod: 'dynamic-proxy-0' },
  connection: { id: 'conn-1', name: 'acme-postgres' },
  project: { id: '5a078d49-1bc3-4a6f-9caa-1d622f18e7cc', name: 'analytics' },
  audit: { verbose: true },
  rlacFilterBehaviour: 'ALLOW_ACCESS',
  tokenization: { secret: 'custos-demo-tokenization-secret' },
  users: [{ name: DEMO_USER, password: DEMO_PASSWORD, groups: ['analysts'] }],
  policies: [{
    ...AUTHORS_PRIVACY_POLICY,
    rules: [
      ...AUTHORS_PRIVACY_POLICY.rules,
      { id: 'r-4', name: 'birth year only', condition: { groups: ['analysts'] }, fields: [{ schema: 'library', table: 'authors', field: 'birth_date' }],
        transformation: { generalizeDate: { granularity: 'year' } } },
      { id: 'r-5', name: 'no e-mail addresses', condition: { groups: ['analysts'] }, fields: [{ schema: 'library', table: 'authors', field: 'email' }],
        transformation: { drop: {} } },
    ],
  }],
};

const DEMO_QUERIES = [
  'select * from library.authors',
  'select a.lastname, b.title from library.authors a join library.books b on b.author_id = a.id order by 1',
  'select count(*) from library.authors',
];

export async function startDemo(options: { sink: EntrySink; project: string; listen?: string }): Promise<{ stop(): Promise<void>; url: string }> {
  const config = await buildConfig(DEMO_CONFIG, 'demo configuration');
  const batching = new BatchingSink(options.sink, { flushMs: 200 });
  const start = (listen: string) => startDataProxy({ config, listen, upstream: 'embedded', sink: batching, project: options.project });
  let proxy;
  try {
    proxy = await start(options.listen ?? '127.0.0.1:6432');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || options.listen) throw err;
    proxy = await start('127.0.0.1:0');
  }
  const url = `postgresql://${DEMO_USER}:${DEMO_PASSWORD}@${proxy.host}:${proxy.port}/acmedb`;
  const client = new pg.Client({ connectionString: url });
  try {
    await client.connect();
    for (const q of DEMO_QUERIES) await client.query(q);
  } catch (err) {
    componentLogger('dataproxy-demo').warn({ err: (err as Error).message }, 'demo query failed');
  } finally {
    await client.end().catch(() => undefined);
  }
  await batching.flush();
  return {
    url,
    async stop() {
      await proxy.stop();
      await batching.close();
    },
  };
}
