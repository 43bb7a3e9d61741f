// Runs `custos egress …` with only the egress command registered, so these tests do not depend on the state of
// other commands in a shared checkout. Same `register` as src/cli/main.ts uses.
import { Command } from 'commander';
import { register } from '../../src/cli/egress.ts';

const program = new Command('custos');
register(program);
try {
  await program.parseAsync();
} catch (err) {
  process.stderr.write(`custos: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
