import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import type { Command } from 'commander';
import { callApi, DEFAULT_SERVER, organizationOption, serverOption, tokenOption } from './client.ts';
import { createProgress } from './progress.ts';

const BATCH_LINES = 1000;
const BATCH_BYTES = 8 * 1024 * 1024;

interface ServerErrors {
  error?: { message?: string; errors?: { line: number; field: string; reason: string }[] };
}

/**
 * Sends NDJSON (one entry a line) in batches, or a JSON document (`{entries:[…]}` or an array) whole. A rejected
 * batch is reported with line numbers of the input file; batches already acknowledged stay stored.
 */
export function register(program: Command): void {
  program
    .command('ingest')
    .description('send LogEntries (JSON or NDJSON) to the store')
    .argument('[file]', 'file to read, or - for stdin', '-')
    .addOption(serverOption())
    .addOption(tokenOption())
    .addOption(organizationOption())
    .action(async (file: string, options: { server?: string; token?: string; organization?: string }) => {
      const server = options.server ?? DEFAULT_SERVER;
      const path = `/v1/entries:write${options.organization ? `?organization=${encodeURIComponent(options.organization)}` : ''}`;
      const input = file === '-' ? process.stdin : createReadStream(file);
      const progress = createProgress('ingest');
      let stored = 0;
      let duplicates = 0;
      let rejected = 0;

      const send = async (body: string, firstLine: number) => {
        try {
          const res = await callApi(server, path, options.token, { method: 'POST', headers: { 'content-type': 'application/x-ndjson' }, body });
          const result = (await res.json()) as { written: number; duplicates: number };
          stored += result.written;
          duplicates += result.duplicates;
          progress.tick(stored);
        } catch (err) {
          const e = err as Error & { body?: string };
          let detail: ServerErrors = {};
          try {
            detail = JSON.parse(e.body ?? '{}') as ServerErrors;
          } catch {
            // not JSON
          }
          const errors = detail.error?.errors;
          if (!errors) throw err;
          for (const bad of errors.slice(0, 20)) {
            process.stderr.write(`${file}:${firstLine + bad.line - 1}: ${bad.field ? `${bad.field}: ` : ''}${bad.reason}\n`);
          }
          rejected += body.split('\n').filter((l) => l.trim()).length;
          process.exitCode = 1;
        }
      };

      const lines = createInterface({ input, crlfDelay: Infinity });
      let batch: string[] = [];
      let bytes = 0;
      let lineNo = 0;
      let batchStart = 1;
      let whole: string[] | undefined;
      for await (const line of lines) {
        lineNo++;
        if (lineNo === 1 && /^\s*(\[|\{\s*"entries"|\{\s*$)/.test(line)) whole = [];
        if (whole) {
          whole.push(line);
          continue;
        }
        if (batch.length === 0) batchStart = lineNo;
        batch.push(line);
        bytes += line.length + 1;
        if (batch.length >= BATCH_LINES || bytes >= BATCH_BYTES) {
          await send(batch.join('\n') + '\n', batchStart);
          batch = [];
          bytes = 0;
        }
      }
      if (whole) {
        const text = whole.join('\n');
        // A single JSON object that is one entry goes as NDJSON of one line; a document goes as it is.
        await send(/^\s*\{\s*"entries"|^\s*\[/.test(text) ? text : JSON.stringify(JSON.parse(text)), 1);
      } else if (batch.some((l) => l.trim())) {
        await send(batch.join('\n') + '\n', batchStart);
      }
      progress.finish(`${stored} stored, ${duplicates} duplicates skipped, ${rejected} rejected`);
    });
}
