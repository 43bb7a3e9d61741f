import type { FastifyInstance } from 'fastify';
import { registry } from '../telemetry/index.ts';
import type { Principal } from './tokens.ts';

const ORG_LABEL = /[{,]org="((?:[^"\\]|\\.)*)"/;

/**
 * Keeps what a principal may see of the exposition: an admin sees all; others see only series labelled with their
 * own organization, plus the unlabelled process series when they belong to the `default` organization that
 * runs the embedded producers. Another organization's label values never leave.
 */
export function scopeExposition(text: string, principal: Principal): string {
  if (principal.role === 'admin') return text;
  const out: string[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') {
      out.push(line);
      continue;
    }
    const org = ORG_LABEL.exec(line)?.[1];
    if (org === undefined ? principal.organization === 'default' : org === principal.organization) out.push(line);
  }
  return out.join('\n');
}

export async function metricsRoutes(app: FastifyInstance): Promise<void> {
  app.get('/metrics', { config: { role: 'reader' } }, async (request, reply) => {
    return reply.type(registry.contentType).send(scopeExposition(await registry.metrics(), request.principal));
  });
  app.get('/healthz', async () => ({ status: 'ok' }));
}
