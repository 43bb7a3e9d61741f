import Fastify, { type FastifyInstance } from 'fastify';
import type { IngestService } from '../ingest/index.ts';
import type { ValidationLimits } from '../model/index.ts';
import { authPlugin } from './auth.ts';
import { installErrorHandler } from './errors.ts';
import { ingestRoutes } from './ingest-routes.ts';
import { integrityRoutes } from './integrity-routes.ts';
import { metricsRoutes } from './metrics-routes.ts';
import { queryRoutes } from './query-routes.ts';
import { tokenRoutes } from './token-routes.ts';
import type { TokenStore } from './tokens.ts';

export interface AppOptions {
  service: IngestService;
  tokens: TokenStore;
  limits: ValidationLimits;
  /** Largest request body, in bytes; over it the answer is 413 and nothing is read further. */
  maxRequestBytes: number;
  /** The project Custos's own audit events are logged under. */
  project: string;
}

/** Assembles the HTTP API from its plugins; each plugin owns its routes. */
export async function buildApp(options: AppOptions): Promise<FastifyInstance> {
  const app = Fastify({ logger: false, bodyLimit: options.maxRequestBytes, return503OnClosing: true, forceCloseConnections: true });
  // Bodies stay raw: entries are validated by our own parser, which names lines and byte offsets.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));
  installErrorHandler(app);
  await app.register(authPlugin, { tokens: options.tokens });
  await app.register(ingestRoutes, { service: options.service, limits: options.limits });
  await app.register(queryRoutes, { service: options.service });
  await app.register(integrityRoutes, { ledger: options.service.ledger });
  await app.register(tokenRoutes, { tokens: options.tokens, service: options.service, project: options.project });
  await app.register(metricsRoutes);
  return app;
}
