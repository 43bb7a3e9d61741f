import { pino, type Logger } from 'pino';

/**
 * Custos's own logs: JSON on stderr (fd 2), never mixed with data records on stdout. Secrets are redacted by path
 * so that a careless `log.info({config})` cannot leak them.
 */
export const logger: Logger = pino(
  {
    name: 'custos',
    level: process.env['CUSTOS_LOG_LEVEL'] ?? 'info',
    redact: {
      paths: ['password', '*.password', '*.*.password', 'token', '*.token', 'authorization', '*.authorization', 'headers.authorization', 'scramVerifier', '*.scramVerifier'],
      censor: '[redacted]',
    },
  },
  pino.destination({ fd: 2, sync: false }),
);

export function componentLogger(component: string): Logger {
  return logger.child({ component });
}
