import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { ThreadedEntryIndex } from '../index/index.ts';
import { IngestService } from '../ingest/index.ts';
import { Ledger, S3ArchiveTarget, s3CredentialsFromEnv, type ArchiveTarget } from '../ledger/index.ts';
import { DEFAULT_LIMITS } from '../model/index.ts';
import { componentLogger, splitHostPort } from '../telemetry/index.ts';
import { buildApp } from './app.ts';
import { parseDuration, type ServeConfig } from './config.ts';
import { TokenStore } from './tokens.ts';

export { loadServeConfig, parseDuration, type ServeConfig } from './config.ts';
export { buildApp } from './app.ts';
export { TokenStore, type Role } from './tokens.ts';

export interface RunningServer {
  url: string;
  /** The data directory, resolved. */
  dataDir: string;
  app: FastifyInstance;
  service: IngestService;
  /** Where the first admin token was written, when this start created it. */
  adminTokenFile?: string;
  /** The admin token's text, when this start created it or it came from `CUSTOS_ADMIN_TOKEN`. */
  adminToken?: string;
  close(): Promise<void>;
}

const log = componentLogger('server');

function archiveTarget(archive: NonNullable<ServeConfig['archive']>, env: NodeJS.ProcessEnv): ArchiveTarget | string {
  if (!archive.s3) return resolve(archive.dir as string);
  const { bucket, region, endpoint, prefix, addressing } = archive.s3;
  return new S3ArchiveTarget({
    bucket, region, addressing, credentials: s3CredentialsFromEnv(env),
    ...(endpoint === undefined ? {} : { endpoint }), ...(prefix === undefined ? {} : { prefix }),
  });
}

/** Opens the store in `config.data` and serves the API. */
export async function startServer(config: ServeConfig, env: NodeJS.ProcessEnv = process.env): Promise<RunningServer> {
  const { host, port } = splitHostPort(config.listen);
  const dataDir = resolve(config.data);
  const tokens = await TokenStore.open(dataDir);
  let adminToken: string | undefined;
  let adminTokenFile: string | undefined;
  const fromEnv = env['CUSTOS_ADMIN_TOKEN'];
  if (fromEnv) {
    await tokens.create('admin', 'default', { secret: fromEnv, description: 'CUSTOS_ADMIN_TOKEN' });
    adminToken = fromEnv;
  } else if (tokens.size === 0) {
    adminToken = (await tokens.create('admin', 'default', { description: 'first admin token' })).token;
    adminTokenFile = join(dataDir, 'admin-token');
    await writeFile(adminTokenFile, adminToken + '\n', { mode: 0o600 });
  }

  // Whatever was opened is closed again if a later step fails, so a failed start leaves no lock or thread behind.
  const opened: (() => Promise<void>)[] = [];
  const undo = async () => {
    for (const close of opened.reverse()) await close().catch(() => {});
  };
  try {
    const ledger = await Ledger.open({
      dir: join(dataDir, 'ledger'),
      ...(config.archive ? { archive: { target: archiveTarget(config.archive, env), maxDelayMs: parseDuration(config.archive.maxDelay)! } } : {}),
    });
    opened.push(() => ledger.close());
    const index = await ThreadedEntryIndex.open(join(dataDir, 'index.duckdb'));
    opened.push(() => index.close());
    const service = await IngestService.open(ledger, index);
    opened.push(() => service.close());
    const app = await buildApp({
      service,
      tokens,
      limits: { ...DEFAULT_LIMITS, maxEntryBytes: config.limits.maxEntryBytes, maxDepth: config.limits.maxDepth },
      maxRequestBytes: config.limits.maxRequestBytes,
      project: config.project,
    });
    opened.push(() => app.close());
    await app.listen({ host, port });
    const address = app.server.address();
    const boundPort = typeof address === 'object' && address ? address.port : port;
    const url = `http://${host.includes(':') ? `[${host}]` : host}:${boundPort}`;
    log.info({ url, data: dataDir }, 'custos store listening');

    let closing: Promise<void> | undefined;
    return {
      url,
      dataDir,
      app,
      service,
      ...(adminToken ? { adminToken } : {}),
      ...(adminTokenFile ? { adminTokenFile } : {}),
      close: () =>
        (closing ??= (async () => {
          // Every part is closed even when one fails (a full disk fails the last checkpoint); the first error is thrown.
          const errors: unknown[] = [];
          for (const step of [() => app.close(), () => service.close(), () => index.close(), () => ledger.close()]) {
            await step().catch((err: unknown) => {
              log.error({ err }, 'error while closing the store');
              errors.push(err);
            });
          }
          if (errors.length) throw errors[0];
        })()),
    };
  } catch (err) {
    await undo();
    throw err;
  }
}
