import { access } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import type { VerifyReport } from '../ledger/index.ts';
import { createProgress } from './progress.ts';

/** Exit status when the data was read but is not intact (1 stays for "could not run"). */
const EXIT_TAMPERED = 2;

/** `--data` may name the server's data dir (holding `ledger/`) or the ledger dir itself. */
async function ledgerDir(dir: string): Promise<string> {
  const nested = join(dir, 'ledger');
  try {
    await access(join(nested, 'ledger.json'));
    return nested;
  } catch {
    return dir;
  }
}

function describeFailure(report: VerifyReport): string {
  const failure = report.failure;
  if (!failure) return '';
  const where = [
    failure.org === undefined ? undefined : `org=${failure.org}`,
    failure.segment === undefined ? undefined : `segment=${failure.segment}`,
    failure.entryIndex === undefined ? undefined : `entry=${failure.entryIndex}`,
  ].filter(Boolean).join(' ');
  return `${failure.code}${where ? ` ${where}` : ''}: ${failure.message}`;
}

export function register(program: Command): void {
  program
    .command('verify')
    .description('recompute every leaf, root, checkpoint signature and archive manifest; exit 0 when intact, 2 naming the first bad organization, segment and entry otherwise')
    .option('--data <dir>', 'data directory to verify (default: data)')
    .option('--archive <dir>', 'archive directory ("bucket") to verify instead')
    .option('--key <key>', 'trusted verifier key (name+keyid+base64) or a file holding it; default: the key stored with the data')
    .option('--json', 'print the report as JSON on stdout')
    .action(async (options: { data?: string; archive?: string; key?: string; json?: boolean }) => {
      if (options.data !== undefined && options.archive !== undefined) throw new Error('give either --data or --archive, not both');
      const archive = options.archive !== undefined;
      const dir = archive ? resolve(options.archive as string) : await ledgerDir(resolve(options.data ?? 'data'));
      const progress = createProgress(archive ? 'verify archive' : 'verify');
      const verifyOptions = { onProgress: (done: number, total: number) => progress.tick(done, `of ~${total.toLocaleString('en-US')} entries`), ...(options.key === undefined ? {} : { verifierKey: options.key }) };
      const { verifyArchive, verifyDataDir } = await import('../ledger/index.ts');
      const report = archive ? await verifyArchive(dir, verifyOptions) : await verifyDataDir(dir, verifyOptions);
      if (report.ok) progress.finish(`intact: ${report.entries.toLocaleString('en-US')} entries in ${report.organizations.length} organization(s)`);
      else progress.finish(`FAILED after ${report.entries.toLocaleString('en-US')} entries`);
      for (const warning of report.warnings) process.stderr.write(`custos verify: warning: ${warning}\n`);
      if (options.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
      if (!report.ok) {
        process.stderr.write(`custos verify: ${describeFailure(report)}\n`);
        process.exitCode = EXIT_TAMPERED;
      }
    });
}
