import { access } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import type { ArchiveTarget, VerifyReport } from '../ledger/index.ts';
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
    .option('--archive <dir|s3://bucket/prefix>', 'archive ("bucket") to verify instead: a directory, or s3://BUCKET[/PREFIX] with credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN')
    .option('--s3-endpoint <url>', 'S3-compatible endpoint (default: https://s3.REGION.amazonaws.com)')
    .option('--s3-region <region>', 'S3 region (default: AWS_REGION, else us-east-1)')
    .option('--s3-addressing <style>', 'path (default, endpoint/bucket/key) or virtual (bucket.endpoint/key)')
    .option('--key <key>', 'trusted verifier key (name+keyid+base64) or a file holding it; default: the key stored with the data')
    .option('--json', 'print the report as JSON on stdout')
    .action(async (options: VerifyCommandOptions) => {
      if (options.data !== undefined && options.archive !== undefined) throw new Error('give either --data or --archive, not both');
      const archive = options.archive !== undefined;
      const progress = createProgress(archive ? 'verify archive' : 'verify');
      const verifyOptions = { onProgress: (done: number, total: number) => progress.tick(done, `of ~${total.toLocaleString('en-US')} entries`), ...(options.key === undefined ? {} : { verifierKey: options.key }) };
      const ledger = await import('../ledger/index.ts');
      const report = archive ? await ledger.verifyArchive(archiveOf(options, ledger), verifyOptions) : await ledger.verifyDataDir(await ledgerDir(resolve(options.data ?? 'data')), verifyOptions);
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

interface VerifyCommandOptions {
  data?: string;
  archive?: string;
  s3Endpoint?: string;
  s3Region?: string;
  s3Addressing?: string;
  key?: string;
  json?: boolean;
}

/** `--archive` as a directory path, or an S3 target when it is an s3:// URL. */
function archiveOf(options: VerifyCommandOptions, ledger: typeof import('../ledger/index.ts')): string | ArchiveTarget {
  const s3 = ledger.parseS3Url(options.archive as string);
  if (!s3) {
    const stray = [options.s3Endpoint && '--s3-endpoint', options.s3Region && '--s3-region', options.s3Addressing && '--s3-addressing'].filter(Boolean);
    if (stray.length) throw new Error(`${stray.join(', ')} only apply to --archive s3://BUCKET[/PREFIX]`);
    return resolve(options.archive as string);
  }
  const addressing = options.s3Addressing ?? 'path';
  if (addressing !== 'path' && addressing !== 'virtual') throw new Error(`--s3-addressing must be path or virtual, not ${JSON.stringify(addressing)}`);
  return new ledger.S3ArchiveTarget({
    ...s3,
    region: options.s3Region ?? process.env['AWS_REGION'] ?? 'us-east-1',
    addressing,
    ...(options.s3Endpoint === undefined ? {} : { endpoint: options.s3Endpoint }),
  });
}
