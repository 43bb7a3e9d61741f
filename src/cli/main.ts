import { Command } from 'commander';
import { logger } from '../telemetry/index.ts';
import { register as dataproxy } from './dataproxy.ts';
import { register as egress } from './egress.ts';
import { register as ingest } from './ingest.ts';
import { register as netpol } from './netpol.ts';
import { register as read } from './read.ts';
import { register as reindex } from './reindex.ts';
import { register as serve } from './serve.ts';
import { register as tail } from './tail.ts';
import { register as token } from './token.ts';
import { register as verify } from './verify.ts';

// One line per command; each file registers its own command and options.
const commands: ((program: Command) => void)[] = [
  serve, ingest, read, tail, reindex, token, egress, netpol, verify, dataproxy,
];

const program = new Command('custos')
  .description('Enforce, log and audit network egress, Kubernetes network policy and database access.')
  .version('0.1.0')
  .showHelpAfterError();
for (const register of commands) register(program);

try {
  await program.parseAsync();
} catch (err) {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`custos: ${message}\n`);
  logger.debug({ err }, 'command failed');
  process.exitCode = process.exitCode || 1;
}
