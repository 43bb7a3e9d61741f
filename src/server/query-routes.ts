import type { FastifyInstance } from 'fastify';
import type { IngestService } from '../ingest/index.ts';
import { compilePredicate, parseFilter } from '../query/index.ts';
import { organizationOf } from './auth.ts';
import { ApiError } from './errors.ts';

/** How far a `tail` reader may fall behind before it is cut off. */
const MAX_TAIL_BUFFER = 8 * 1024 * 1024;

interface ListRequest {
  filter?: string;
  orderBy?: string;
  pageSize?: number;
  pageToken?: string;
  resourceNames?: string[];
  organization?: string;
}

function parseJsonBody(body: unknown): Record<string, unknown> {
  if (body instanceof Buffer) {
    if (body.length === 0) return {};
    try {
      const value: unknown = JSON.parse(body.toString('utf8'));
      if (value && typeof value === 'object' && !Array.isArray(value)) return value as Record<string, unknown>;
    } catch (err) {
      throw new ApiError(400, 'INVALID_ARGUMENT', `request body is not JSON: ${(err as Error).message}`);
    }
  }
  throw new ApiError(400, 'INVALID_ARGUMENT', 'request body must be a JSON object');
}

/**
 * `resourceNames` as Cloud Logging takes them: `organizations/ORG` picks the organization, `projects/P` restricts
 * to that project's logs. At most one organization per request: ledgers and access are per organization.
 */
function splitResourceNames(names: unknown): { organization?: string; logNamePrefixes: string[] } {
  if (names === undefined) return { logNamePrefixes: [] };
  if (!Array.isArray(names) || names.some((n) => typeof n !== 'string')) throw new ApiError(400, 'INVALID_ARGUMENT', 'resourceNames must be an array of strings');
  const orgs = new Set<string>();
  const logNamePrefixes: string[] = [];
  for (const name of names as string[]) {
    const [kind, id, ...rest] = name.split('/');
    if (!id || rest.length) throw new ApiError(400, 'INVALID_ARGUMENT', `resourceNames: "${name}" is not organizations/ORG or projects/PROJECT`);
    if (kind === 'organizations') orgs.add(id);
    else if (kind === 'projects') logNamePrefixes.push(`projects/${id}/logs/`);
    else throw new ApiError(400, 'INVALID_ARGUMENT', `resourceNames: "${name}" is not organizations/ORG or projects/PROJECT`);
  }
  if (orgs.size > 1) throw new ApiError(400, 'INVALID_ARGUMENT', 'resourceNames may name one organization per request');
  const [organization] = orgs;
  return organization === undefined ? { logNamePrefixes } : { organization, logNamePrefixes };
}

export async function queryRoutes(app: FastifyInstance, options: { service: IngestService }): Promise<void> {
  const { service } = options;

  app.post('/v1/entries::list', { config: { role: 'reader' } }, async (request) => {
    const body = parseJsonBody(request.body) as ListRequest;
    const fromNames = splitResourceNames(body.resourceNames);
    if (body.organization !== undefined && fromNames.organization !== undefined && body.organization !== fromNames.organization) {
      throw new ApiError(400, 'INVALID_ARGUMENT', 'organization and resourceNames name different organizations');
    }
    const org = organizationOf(request, body.organization ?? fromNames.organization);
    if (body.orderBy !== undefined && body.orderBy !== 'timestamp desc' && body.orderBy !== 'timestamp asc') {
      throw new ApiError(400, 'INVALID_ARGUMENT', 'orderBy must be "timestamp desc" or "timestamp asc"');
    }
    if (body.pageSize !== undefined && (!Number.isInteger(body.pageSize) || body.pageSize < 1 || body.pageSize > 1000)) {
      throw new ApiError(400, 'INVALID_ARGUMENT', 'pageSize must be an integer from 1 to 1000');
    }
    if (body.filter !== undefined && typeof body.filter !== 'string') throw new ApiError(400, 'INVALID_ARGUMENT', 'filter must be a string');
    if (body.filter) parseFilter(body.filter); // a bad filter is a 400 before any waiting
    return service.list({
      organization: org,
      ...(body.filter ? { filter: body.filter } : {}),
      ...(body.orderBy ? { orderBy: body.orderBy } : {}),
      ...(body.pageSize ? { pageSize: body.pageSize } : {}),
      ...(body.pageToken ? { pageToken: body.pageToken } : {}),
      ...(fromNames.logNamePrefixes.length ? { logNamePrefixes: fromNames.logNamePrefixes } : {}),
    });
  });

  // Live entries through the same filter language, evaluated in memory (`custos tail`). NDJSON, one entry a line.
  app.get<{ Querystring: { filter?: string; organization?: string } }>(
    '/v1/entries::tail',
    { config: { role: 'reader' } },
    async (request, reply) => {
      const org = organizationOf(request, request.query.organization);
      const matches = request.query.filter ? compilePredicate(parseFilter(request.query.filter)) : () => true;
      reply.raw.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache' });
      reply.raw.write('\n');
      const unsubscribe = service.subscribe(org, (entry) => {
        if (!matches(entry)) return;
        // A reader that stops reading is cut off rather than buffered without bound.
        if (reply.raw.writableLength > MAX_TAIL_BUFFER) {
          unsubscribe();
          reply.raw.end('{"error":{"code":"SLOW_READER","message":"the client fell more than 8 MiB behind; tail again"}}\n');
          return;
        }
        reply.raw.write(JSON.stringify(entry) + '\n');
      });
      const heartbeat = setInterval(() => reply.raw.write('\n'), 15_000);
      await new Promise<void>((resolve) => request.raw.socket.once('close', resolve));
      clearInterval(heartbeat);
      unsubscribe();
      return reply;
    },
  );
}
