import type { Command } from 'commander';
import { parseFilter } from '../query/index.ts';
import { callApi, DEFAULT_SERVER, organizationOption, serverOption, tokenOption } from './client.ts';

export function register(program: Command): void {
  program
    .command('tail')
    .description('print entries matching a filter as they arrive (NDJSON)')
    .argument('[filter]', 'Cloud Logging query language filter', '')
    .addOption(serverOption())
    .addOption(tokenOption())
    .addOption(organizationOption())
    .action(async (filter: string, options: { server?: string; token?: string; organization?: string }) => {
      if (filter) parseFilter(filter);
      const query = new URLSearchParams({ ...(filter ? { filter } : {}), ...(options.organization ? { organization: options.organization } : {}) });
      const res = await callApi(options.server ?? DEFAULT_SERVER, `/v1/entries:tail?${query}`, options.token);
      const decoder = new TextDecoder();
      let partial = '';
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        const lines = (partial + decoder.decode(chunk, { stream: true })).split('\n');
        partial = lines.pop()!;
        for (const line of lines) if (line.trim()) process.stdout.write(line + '\n');
      }
    });
}
