import { join } from 'node:path';
import { Option, type Command } from 'commander';
import type { EntryIndex } from '../index/index.ts';
import type { LogEntry } from '../model/index.ts';
import { canonicalForm, parseFilter } from '../query/index.ts';
import { parseDuration } from '../server/config.ts';
import { callApi, DEFAULT_SERVER, organizationOption, serverOption, tokenOption } from './client.ts';

interface ReadOptions {
  server?: string;
  data?: string;
  token?: string;
  organization?: string;
  limit: string;
  freshness: string;
  order: 'asc' | 'desc';
  format: 'json' | 'ndjson' | 'table';
  explain?: boolean;
}

/** gcloud's rule: `--freshness` applies only when the filter says nothing about `timestamp`. */
export function withFreshness(filter: string, freshness: string, now = Date.now()): string {
  if (/\btimestamp\s*(>=|<=|>|<|=)/.test(filter)) return filter;
  const ms = parseDuration(freshness);
  if (ms === undefined) throw new Error(`--freshness "${freshness}" is not a duration like 30m, 6h, 1d`);
  const since = `timestamp>="${new Date(now - ms).toISOString()}"`;
  return filter.trim() ? `${since} AND (${filter})` : since;
}

function summary(entry: LogEntry): string {
  const p = entry.jsonPayload as Record<string, any> | undefined; // eslint-disable-line @typescript-eslint/no-explicit-any
  if (!p) return entry.textPayload ?? '';
  if (p['connection'] && p['disposition']) {
    const c = p['connection'];
    return `${p['disposition']} ${c.direction} ${c.src_ip}:${c.src_port ?? ''} → ${c.dest_ip}:${c.dest_port ?? ''}/${c.protocol}${p['count'] > 1 ? ` ×${p['count']}` : ''}`;
  }
  if (p['response_flags']) return `${p['response_flags']} ${p['metadata']?.source ?? '-'} → ${p['destination_host'] ?? ''}:${p['destination_port']} via ${p['metadata']?.network_policy ?? '-'}`;
  if (p['header']) return `${p['header'].event?.action} ${p['header'].status?.outcome} by ${p['header'].initiator?.id}`;
  if (p['action']) return `${p['action']} ${p['outcome'] ?? ''} by ${p['actor']?.username ?? p['actor']?.userId ?? '-'}`;
  return JSON.stringify(p).slice(0, 100);
}

export function formatTable(entries: LogEntry[]): string {
  const rows = entries.map((e) => [e.timestamp, e.severity, e.logName.replace(/^.*\/logs\//, ''), e.categories.join(','), summary(e)]);
  const head = ['TIMESTAMP', 'SEVERITY', 'LOG', 'CATEGORIES', 'SUMMARY'];
  const widths = head.map((h, i) => Math.min(40, Math.max(h.length, ...rows.map((r) => r[i]!.length))));
  const line = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.slice(0, widths[i]).padEnd(widths[i]!))).join('  ');
  return [line(head), ...rows.map(line)].join('\n') + '\n';
}

type PageRequest = { pageSize: number; pageToken?: string };
type Page = { entries: LogEntry[]; nextPageToken?: string };

/** Follows page tokens until `limit` entries were read or the results end; one loop for every source. */
async function* pages(fetchPage: (request: PageRequest) => Promise<Page>, limit: number): AsyncGenerator<LogEntry[]> {
  let pageToken: string | undefined;
  let left = limit;
  do {
    const page = await fetchPage({ pageSize: Math.min(1000, left), ...(pageToken ? { pageToken } : {}) });
    left -= page.entries.length;
    yield page.entries;
    pageToken = page.nextPageToken;
  } while (pageToken && left > 0);
}

function pagesFromServer(server: string, options: ReadOptions, filter: string, limit: number): AsyncGenerator<LogEntry[]> {
  return pages(async (request) => {
    const res = await callApi(server, '/v1/entries:list', options.token, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ filter, orderBy: `timestamp ${options.order}`, ...request, ...(options.organization ? { organization: options.organization } : {}) }),
    });
    return (await res.json()) as Page;
  }, limit);
}

async function* pagesFromData(dir: string, options: ReadOptions, filter: string, limit: number): AsyncGenerator<LogEntry[]> {
  let index: EntryIndex;
  try {
    index = await (await import('../index/index.ts')).EntryIndex.open(join(dir, 'index.duckdb'));
  } catch (err) {
    throw new Error(`cannot open the index in ${dir} (is a server running on it? then use --server): ${(err as Error).message}`, { cause: err });
  }
  try {
    yield* pages((request) => index.list({ organization: options.organization ?? 'default', filter, orderBy: `timestamp ${options.order}`, ...request }), limit);
  } finally {
    await index.close();
  }
}

export function register(program: Command): void {
  program
    .command('read')
    .description('read entries matching a Logging query filter, like `gcloud logging read`')
    .argument('[filter]', 'Cloud Logging query language filter', '')
    .addOption(serverOption())
    .option('--data <dir>', 'read the index of a data directory directly (no server running on it)')
    .addOption(tokenOption())
    .addOption(organizationOption())
    .option('--limit <n>', 'most entries to print', '100')
    .option('--freshness <duration>', 'only entries newer than this, unless the filter restricts timestamp', '1d')
    .addOption(new Option('--order <order>', 'timestamp order').choices(['desc', 'asc']).default('desc'))
    .addOption(new Option('--format <format>', 'output format').choices(['json', 'ndjson', 'table']).default('json'))
    .option('--explain', 'print the filter fully parenthesized, as Custos understands it, and exit')
    .action(async (filterText: string, options: ReadOptions) => {
      if (options.explain) {
        process.stdout.write(canonicalForm(parseFilter(filterText)) + '\n');
        return;
      }
      const limit = Number(options.limit);
      if (!Number.isInteger(limit) || limit < 1) throw new Error('--limit must be a positive integer');
      const filter = withFreshness(filterText, options.freshness);
      parseFilter(filter);
      const pages = options.data ? pagesFromData(options.data, options, filter, limit) : pagesFromServer(options.server ?? DEFAULT_SERVER, options, filter, limit);
      const all: LogEntry[] = [];
      for await (const page of pages) {
        if (options.format === 'ndjson') for (const e of page) process.stdout.write(JSON.stringify(e) + '\n');
        else all.push(...page);
      }
      if (options.format === 'json') process.stdout.write(JSON.stringify(all.slice(0, limit), null, 2) + '\n');
      if (options.format === 'table') process.stdout.write(formatTable(all.slice(0, limit)));
    });
}
