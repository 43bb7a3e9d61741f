import type { FastifyError, FastifyInstance } from 'fastify';
import { BodyError } from '../model/index.ts';
import { LedgerError } from '../ledger/index.ts';
import { IndexError } from '../index/index.ts';
import { QueryError } from '../query/index.ts';
import { componentLogger } from '../telemetry/index.ts';

/** An API failure with a status and a stable code; the body is `{error: {code, message, ...details}}`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

const log = componentLogger('api');
/** Ledger refusals caused by the request itself; every other ledger failure is the store's (503). */
const CLIENT_LEDGER_ERRORS = new Set<string>(['INVALID_ARGUMENT', 'INVALID_ORG', 'INVALID_ENTRY']);

export function installErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | Error, request, reply) => {
    let status = 500;
    let body: Record<string, unknown>;
    if (err instanceof ApiError) {
      status = err.status;
      body = { code: err.code, message: err.message, ...err.details };
    } else if (err instanceof BodyError) {
      status = err.status;
      body = { code: status === 413 ? 'ENTRY_TOO_LARGE' : 'INVALID_ENTRIES', message: `rejected the whole batch; nothing was stored: ${err.message.slice(0, 2000)}`, errors: err.errors.slice(0, 1000) };
    } else if (err instanceof QueryError) {
      status = 400;
      body = { code: 'INVALID_FILTER', message: err.message, reason: err.code, line: err.line, column: err.column };
    } else if (err instanceof IndexError) {
      status = 503;
      body = { code: 'INDEX_UNAVAILABLE', message: `the index could not answer; every acknowledged entry is still in the ledger: ${err.message}`, reason: err.code };
      log.error({ err }, 'index failure');
    } else if (err instanceof LedgerError && CLIENT_LEDGER_ERRORS.has(err.code)) {
      status = 400;
      body = { code: 'INVALID_ARGUMENT', message: err.message, reason: err.code };
    } else if (err instanceof LedgerError) {
      status = 503;
      body = { code: 'STORAGE_UNAVAILABLE', message: `the ledger could not store the entries; nothing was acknowledged: ${err.message}`, reason: err.code };
      log.error({ err }, 'ledger failure');
    } else if ('statusCode' in err && typeof err.statusCode === 'number' && err.statusCode < 500) {
      status = err.statusCode;
      const tooLarge = err.code === 'FST_ERR_CTP_BODY_TOO_LARGE';
      body = { code: tooLarge ? 'REQUEST_TOO_LARGE' : (err.code ?? 'BAD_REQUEST'), message: err.message };
    } else {
      log.error({ err, url: request.url }, 'request failed');
      body = { code: 'INTERNAL', message: 'internal error; see the server log' };
    }
    void reply.status(status).send({ error: body });
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.status(404).send({ error: { code: 'NOT_FOUND', message: `no route ${request.method} ${request.url.split('?')[0]}` } });
  });
}
