import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { createProgress } from './progress.ts';

export function register(program: Command): void {
  program
    .command('reindex')
    .description('rebuild the index of a data directory from its ledger (stop the server first)')
    .option('--data <dir>', 'data directory', 'data')
    .action(async (options: { data: string }) => {
      const [{ EntryIndex }, { IngestService }, { Ledger }] = await Promise.all([import('../index/index.ts'), import('../ingest/index.ts'), import('../ledger/index.ts')]);
      const dir = resolve(options.data);
      const ledger = await Ledger.open({ dir: join(dir, 'ledger') });
      const index = await EntryIndex.open(join(dir, 'index.duckdb'));
      try {
        const service = await IngestService.open(ledger, index);
        const progress = createProgress('reindex');
        const count = await service.reindex((done, total) => progress.tick(done, `of ${total}`));
        await service.close();
        progress.finish(`${count} entries indexed from ${ledger.organizations().length} organization ledger(s)`);
      } finally {
        await index.close();
        await ledger.close();
      }
    });
}
