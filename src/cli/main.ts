import { Command } from 'commander';
import { logger } from '../telemetry/index.ts';

// One line per command; each file registers its own command and options.
const commands: ((program: Command) => void)[] = [
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
