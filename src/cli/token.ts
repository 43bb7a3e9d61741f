import { Option, type Command } from 'commander';
import { callApi, DEFAULT_SERVER, serverOption, tokenOption } from './client.ts';

export function register(program: Command): void {
  const token = program.command('token').description('manage API tokens (needs an admin token)');
  token
    .command('create')
    .description('create a token; prints it once')
    .addOption(new Option('--role <role>', 'what the token may do').choices(['reader', 'writer', 'admin']).makeOptionMandatory())
    .requiredOption('--organization <org>', 'organization the token belongs to')
    .option('--description <text>', 'what the token is for')
    .addOption(serverOption())
    .addOption(tokenOption())
    .action(async (options: { role: string; organization: string; description?: string; server?: string; token?: string }) => {
      const res = await callApi(options.server ?? DEFAULT_SERVER, '/v1/tokens', options.token, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ role: options.role, organization: options.organization, description: options.description }),
      });
      const created = (await res.json()) as { token: string; id: string };
      process.stdout.write(created.token + '\n');
      process.stderr.write(`token ${created.id} (${options.role}, organization ${options.organization}) created; it is shown only this once\n`);
    });
  token
    .command('list')
    .description('list tokens (never their values)')
    .addOption(serverOption())
    .addOption(tokenOption())
    .action(async (options: { server?: string; token?: string }) => {
      const res = await callApi(options.server ?? DEFAULT_SERVER, '/v1/tokens', options.token);
      process.stdout.write(JSON.stringify(await res.json(), null, 2) + '\n');
    });
}
