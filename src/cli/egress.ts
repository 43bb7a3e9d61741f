import type { Command } from 'commander';
import { DEFAULT_PROJECT } from '../model/index.ts';
import { serveMetrics } from '../telemetry/index.ts';

interface EgressOptions {
  config?: string;
  listen?: string;
  socks5?: string;
  server?: string;
  token?: string;
  project: string;
  logFile?: string;
  metricsListen?: string;
}

export function register(program: Command): void {
  // `custos egress agent …` is a role argument rather than a subcommand, so that `--listen` means the same flag for
  // both roles whatever positional-option mode the root program uses.
  program
    .command('egress')
    .description(
      'egress proxy (HTTP CONNECT, HTTP forward, SOCKS5) enforcing egress policies, one network-egress record per connection;\n' +
        '`custos egress agent --listen HOST:PORT [--id ID]` runs an agent proxy in a remote network',
    )
    .argument('[role]', '"agent" to run an agent proxy instead of the egress proxy')
    .option('--config <file>', 'egress config (YAML): policies, sources, resolver (required for the proxy)')
    .option('--listen <host:port>', 'proxy: HTTP listener (overrides the config\'s listen); agent: its listen address (required)')
    .option('--socks5 <host:port>', 'SOCKS5 listener (overrides the config\'s socks5)')
    .option('--server <url>', 'write records to this Custos store')
    .option('--token <token>', 'bearer token for --server (default: CUSTOS_TOKEN)')
    .option('--project <id>', 'project in the logName projects/P/logs/network-egress', DEFAULT_PROJECT)
    .option('--log-file <path|->', 'also write records as NDJSON LogEntries to a file, or - for stdout (the default without --server)')
    .option('--metrics-listen <host:port>', 'serve Prometheus /metrics on this address')
    .option('--id <id>', 'agent: its id, as the policy lists it (default: the listen address)')
    .action(async (role: string | undefined, options: EgressOptions & { id?: string }) => {
      if (role === 'agent') return runAgent(options);
      if (role !== undefined) throw new Error(`unknown egress role "${role}" (expected "agent" or nothing)`);
      if (!options.config) throw new Error('egress: --config FILE is required');
      return runProxy(options as EgressOptions & { config: string });
    });
}

async function runProxy(options: EgressOptions & { config: string }): Promise<void> {
  const [{ createRecordOutput, runEgressService }, { clientToken, HttpEntrySink }] = await Promise.all([import('../egress/index.ts'), import('../ingest/sink.ts')]);
  const output = createRecordOutput({
    project: options.project,
    ...(options.server ? { sink: new HttpEntrySink(options.server, clientToken(options.token)) } : {}),
    ...(options.logFile ? { logFile: options.logFile } : options.server ? {} : { logFile: '-' }),
  });
  const metrics = options.metricsListen ? await serveMetrics(options.metricsListen) : undefined;
  const service = await runEgressService({
    configFile: options.config,
    output,
    overrides: { ...(options.listen ? { listen: options.listen } : {}), ...(options.socks5 ? { socks5: options.socks5 } : {}) },
  });
  const addresses = Object.entries(service.proxy.addresses()).map(([kind, address]) => `${kind}=${address}`);
  if (metrics) {
    const bound = metrics.address() as { address: string; port: number };
    addresses.push(`metrics=${bound.address.includes(':') ? `[${bound.address}]` : bound.address}:${bound.port}`);
  }
  process.stderr.write(`custos egress: listening ${addresses.join(' ')}\n`);
  await service.stopped;
  metrics?.close();
}

async function runAgent(options: { listen?: string; id?: string }): Promise<void> {
  if (!options.listen) throw new Error('egress agent: --listen HOST:PORT is required');
  const { startAgent } = await import('../egress/index.ts');
  const agent = await startAgent({ id: options.id ?? options.listen, listen: options.listen });
  process.stderr.write(`custos egress agent ${agent.id}: listening ${agent.address}\n`);
  await new Promise<void>((resolve) => {
    const stop = (): void => void agent.close().then(resolve);
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
}
