import type { FastifyInstance } from 'fastify';
import type { Ledger } from '../ledger/index.ts';
import { organizationOf } from './auth.ts';
import { ApiError } from './errors.ts';

function whole(value: string | undefined, name: string): number | undefined {
  if (value === undefined || value === '') return undefined;
  if (!/^\d{1,15}$/.test(value)) throw new ApiError(400, 'INVALID_ARGUMENT', `${name} must be a non-negative integer`);
  return Number(value);
}

/** Checkpoints and proofs: a client checks for itself that the log is append-only and holds its entries. */
export async function integrityRoutes(app: FastifyInstance, options: { ledger: Ledger }): Promise<void> {
  const { ledger } = options;
  const sizeOf = (org: string) => (ledger.organizations().includes(org) ? ledger.treeSize(org) : 0);

  app.get<{ Querystring: { org?: string } }>('/v1/checkpoint', { config: { role: 'reader' } }, async (request, reply) => {
    const org = organizationOf(request, request.query.org);
    if (!ledger.organizations().includes(org)) throw new ApiError(404, 'NOT_FOUND', `organization ${org} has no entries yet`);
    return reply.type('text/plain; charset=utf-8').send(await ledger.checkpoint(org));
  });

  app.get('/v1/publickey', { config: { role: 'reader' } }, async (_request, reply) => reply.type('text/plain; charset=utf-8').send(ledger.verifierKey() + '\n'));

  app.get<{ Querystring: { org?: string; index?: string; treeSize?: string } }>('/v1/proof/inclusion', { config: { role: 'reader' } }, async (request) => {
    const org = organizationOf(request, request.query.org);
    const index = whole(request.query.index, 'index');
    const treeSize = whole(request.query.treeSize, 'treeSize') ?? sizeOf(org);
    if (index === undefined) throw new ApiError(400, 'INVALID_ARGUMENT', 'index is required');
    if (index >= treeSize || treeSize > sizeOf(org)) throw new ApiError(400, 'OUT_OF_RANGE', `index ${index} is not below tree size ${treeSize} (log size ${sizeOf(org)})`);
    return ledger.inclusionProof(org, index, treeSize);
  });

  app.get<{ Querystring: { org?: string; from?: string; to?: string } }>('/v1/proof/consistency', { config: { role: 'reader' } }, async (request) => {
    const org = organizationOf(request, request.query.org);
    const from = whole(request.query.from, 'from');
    const to = whole(request.query.to, 'to') ?? sizeOf(org);
    if (from === undefined) throw new ApiError(400, 'INVALID_ARGUMENT', 'from is required');
    if (from < 1 || from > to || to > sizeOf(org)) throw new ApiError(400, 'OUT_OF_RANGE', `need 1 ≤ from ≤ to ≤ ${sizeOf(org)}`);
    return ledger.consistencyProof(org, from, to);
  });
}
