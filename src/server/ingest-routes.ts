import type { FastifyInstance } from 'fastify';
import type { IngestService } from '../ingest/index.ts';
import { parseWriteBody, type ValidationLimits } from '../model/index.ts';
import { organizationOf } from './auth.ts';

/** `POST /v1/entries:write`: JSON `{entries:[…]}` or NDJSON; 200 only once every entry is durable. */
export async function ingestRoutes(app: FastifyInstance, options: { service: IngestService; limits: ValidationLimits }): Promise<void> {
  app.post<{ Querystring: { organization?: string } }>(
    '/v1/entries::write',
    {
      config: { role: 'writer' },
      schema: { querystring: { type: 'object', properties: { organization: { type: 'string', maxLength: 64 } } } },
    },
    async (request) => {
      const org = organizationOf(request, request.query.organization);
      const body = request.body instanceof Buffer ? request.body : Buffer.alloc(0);
      const result = await options.service.write(org, parseWriteBody(body, options.limits));
      return { organization: org, ...result };
    },
  );
}
