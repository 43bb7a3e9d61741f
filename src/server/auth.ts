import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { ApiError } from './errors.ts';
import { can, type Principal, type Role, type TokenStore } from './tokens.ts';
import { Counter } from 'prom-client';
import { registry } from '../telemetry/index.ts';

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal;
  }
  interface FastifyContextConfig {
    /** The least role a route needs; routes without one are public (only `/healthz`). */
    role?: Role;
  }
}

const authFailures = new Counter({ name: 'custos_api_auth_failures_total', help: 'Requests refused for a missing or unknown token', registers: [registry] });

/** Bearer-token authentication for every route that declares a `config.role`. */
export const authPlugin = fp(async (app: FastifyInstance, options: { tokens: TokenStore }) => {
  app.decorateRequest('principal', null as unknown as Principal);
  app.addHook('onRequest', async (request) => {
    const needed = request.routeOptions.config?.role;
    if (!needed) return;
    const header = request.headers.authorization ?? '';
    const match = /^Bearer\s+(\S+)$/i.exec(header);
    const principal = match ? options.tokens.authenticate(match[1]!) : undefined;
    if (!principal) {
      authFailures.inc();
      throw new ApiError(401, 'UNAUTHENTICATED', match ? 'unknown token' : 'an API token is required: Authorization: Bearer TOKEN');
    }
    if (!can(principal, needed)) throw new ApiError(403, 'PERMISSION_DENIED', `this route needs the ${needed} role; the token has ${principal.role}`);
    request.principal = principal;
  });
});

/**
 * The organization a request acts on: the token's own, or for an admin token the one the request names
 * (default `default`). A non-admin naming another organization is refused, never silently rescoped.
 */
export function organizationOf(request: FastifyRequest, requested?: string): string {
  const { principal } = request;
  if (requested !== undefined && requested !== '' && !/^[a-z0-9][a-z0-9._-]{0,62}$/.test(requested)) {
    throw new ApiError(400, 'INVALID_ARGUMENT', `organization "${requested.slice(0, 80)}" is not a valid name ([a-z0-9._-], at most 63)`);
  }
  if (principal.role === 'admin') return requested || 'default';
  if (requested && requested !== principal.organization) {
    throw new ApiError(403, 'PERMISSION_DENIED', `the token belongs to organization ${principal.organization}`);
  }
  return principal.organization;
}
