import type { FastifyInstance } from 'fastify';
import type { IngestService } from '../ingest/index.ts';
import { LOG_IDS, logName, type PlatformAuditEvent } from '../model/index.ts';
import { organizationOf } from './auth.ts';
import { ApiError } from './errors.ts';
import { ROLES, type Role, type TokenStore } from './tokens.ts';

/** Token management for admins. Each new token is itself an audit event (`tokenGeneration`) in Custos's audit log. */
export async function tokenRoutes(app: FastifyInstance, options: { tokens: TokenStore; service: IngestService; project: string }): Promise<void> {
  app.post<{ Body: Buffer }>('/v1/tokens', { config: { role: 'admin' } }, async (request) => {
    let body: { role?: string; organization?: string; description?: string };
    try {
      body = JSON.parse(request.body.toString('utf8') || '{}') as typeof body;
    } catch {
      throw new ApiError(400, 'INVALID_ARGUMENT', 'request body must be JSON {role, organization, description}');
    }
    if (!ROLES.includes(body.role as Role)) throw new ApiError(400, 'INVALID_ARGUMENT', `role must be one of ${ROLES.join(', ')}`);
    const organization = organizationOf(request, body.organization);
    const { token, record } = await options.tokens.create(body.role as Role, organization, body.description ? { description: String(body.description).slice(0, 200) } : {});
    const event: PlatformAuditEvent = {
      action: 'token.create',
      outcome: 'SUCCESS',
      actor: { userId: `token:${request.principal.tokenId}`, sourceIp: request.ip },
      target: { id: `token:${record.id}`, type: 'api-token' },
      parameters: { tokenId: record.id, tokenType: record.role, organization },
    };
    await options.service.write(organization, [
      { logName: logName(options.project, LOG_IDS.audit), severity: 'NOTICE', resource: { type: 'custos_server', labels: {} }, jsonPayload: { ...event } },
    ]);
    return { token, id: record.id, role: record.role, organization };
  });

  app.get('/v1/tokens', { config: { role: 'admin' } }, async () => ({ tokens: options.tokens.list() }));
}
