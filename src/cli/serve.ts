import type { Command } from 'commander';

export function register(program: Command): void {
  program
    .command('serve')
    .description('run the store: ingest, ledger, index, HTTP API and /metrics')
    .option('--data <dir>', 'data directory (ledger, index, keys, tokens)')
    .option('--port <port>', 'port to listen on (default 8080)')
    .option('--host <host>', 'address to listen on (default 127.0.0.1)')
    .option('--config <file>', 'YAML configuration file')
    .option('--demo', 'also run the netpol, egress and dataproxy producers on demo data, writing into this store')
    .action(async (options: { data?: string; port?: string; host?: string; config?: string; demo?: boolean }) => {
      const { loadServeConfig, startServer } = await import('../server/index.ts');
      const config = await loadServeConfig(options.config);
      if (options.data) config.data = options.data;
      if (options.port || options.host) {
        const [defaultHost, defaultPort] = config.listen.split(/:(?=\d+$)/);
        config.listen = `${options.host ?? defaultHost}:${options.port ?? defaultPort}`;
      }
      const server = await startServer(config);
      const lines = [`custos store listening on ${server.url} (data in ${config.data})`];
      if (server.adminTokenFile) lines.push(`first admin token written to ${server.adminTokenFile}`);
      const demo = options.demo ? await (await import('../server/demo.ts')).startDemo(server, config.project) : undefined;
      if (demo) lines.push(...demo.describe);
      process.stdout.write(lines.join('\n') + '\n');
      const stop = async () => {
        process.off('SIGINT', stop).off('SIGTERM', stop);
        await demo?.stop();
        await server.close();
      };
      process.on('SIGINT', stop).on('SIGTERM', stop);
    });
}
