import type { Command } from 'commander';
import { DEFAULT_PROJECT } from '../model/index.ts';

export function register(program: Command): void {
  program
    .command('dataproxy')
    .description('PostgreSQL proxy that masks protected fields, filters rows and writes seed-003 audit events')
    .requiredOption('--config <file>', 'YAML configuration (users, policies, upstream, …)')
    .option('--listen <host:port>', 'listen address (default: the config\'s listen, else 127.0.0.1:6432)')
    .option('--upstream <url>', 'postgres://… URL, or "embedded" for the in-process demo database')
    .option('--server <url>', 'Custos store to write audit LogEntries to')
    .option('--token <token>', 'bearer token for --server (default: $CUSTOS_TOKEN)')
    .option('--project <id>', 'project of the LogEntries (projects/P/logs/data-proxy-audit)', DEFAULT_PROJECT)
    .option('--log-file <path>', 'also write events as NDJSON to this file, or - for stdout')
    .action(async (opts: { config: string; listen?: string; upstream?: string; server?: string; token?: string; project: string; logFile?: string }) => {
      const [{ loadConfig, startDataProxy }, { BatchingSink, clientToken, HttpEntrySink }] = await Promise.all([import('../dataproxy/index.ts'), import('../ingest/sink.ts')]);
      const config = await loadConfig(opts.config);
      const sink = opts.server ? new BatchingSink(new HttpEntrySink(opts.server, clientToken(opts.token))) : undefined;
      if (!sink && !opts.logFile) opts.logFile = '-';
      const proxy = await startDataProxy({ config, listen: opts.listen, upstream: opts.upstream, sink, logFile: opts.logFile, project: opts.project });
      process.stderr.write(`custos dataproxy: listening on ${proxy.host}:${proxy.port} (upstream ${proxy.upstream.kind})\n`);
      await new Promise<void>((resolve) => {
        const stop = (): void => resolve();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      await proxy.stop();
      if (sink) await sink.close();
    });
}
