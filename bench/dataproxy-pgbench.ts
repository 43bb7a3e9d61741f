/**
 * `pgbench -S` at 8 clients in the three query modes, side by side in one run: direct to PostgreSQL, through
 * pgbouncer (Debian's, session pooling, on a loopback port in a temp dir), through Custos with no protected table
 * touched, through Custos with a policy on pgbench_accounts whose rules keep the columns pgbench reads as they are
 * (the table is then read as written), with a masking policy that tokenizes the balance pgbench reads, and with that
 * masking policy plus a row filter.
 *
 *   node --import tsx bench/dataproxy-pgbench.ts [--seconds 30] [--clients 8] [--scale 1] [--rounds 5]
 *
 * A mode's cells are run as `--rounds` interleaved rounds of `--seconds / --rounds` each (targets in a rotated order
 * every round), so on a shared machine a change in load falls on every target alike rather than on one cell.
 *
 * Needs PostgreSQL on 127.0.0.1:5432 (trust) and `apt-get install -y pgbouncer`. Prints a markdown table.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { stringify } from 'yaml';
import { custosArgs } from '../test/helpers/bin.ts';

const run = promisify(execFile);
const arg = (name: string, fallback: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
};
const SECONDS = arg('seconds', 30);
const CLIENTS = arg('clients', 8);
const SCALE = arg('scale', 1);
const ROUNDS = arg('rounds', 5);
const ROUND_SECONDS = Math.max(1, Math.round(SECONDS / ROUNDS));
const MODES = ['simple', 'extended', 'prepared'] as const;
const DB = `dp_bench_${process.pid}`;
const ADMIN = 'postgres://postgres@127.0.0.1:5432/test';

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

async function sql(url: string, text: string): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => undefined);
  await c.connect();
  try {
    await c.query(text);
  } finally {
    await c.end();
  }
}

async function waitForPort(port: number, proc: ChildProcess): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (proc.exitCode !== null) throw new Error(`process exited with ${proc.exitCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(true));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(false)));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing listens on ${port}`);
}

/** CPU time (user + system, all threads) a process has used so far, in µs, from /proc/PID/stat. */
function cpuMicros(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  // utime and stime are fields 14 and 15 of stat(5); after the command name they are the 12th and 13th.
  return ((Number(fields[11]) + Number(fields[12])) * 1e6) / CLOCK_TICKS;
}
const CLOCK_TICKS = Number((await run('getconf', ['CLK_TCK'])).stdout.trim());

/** One target in one mode, summed over its rounds. */
class Cell {
  private transactions = 0;
  /** Seconds of pgbench time excluding connection set-up (transactions / tps of each round). */
  private seconds = 0;
  private cpu = 0;
  add(transactions: number, tps: number, cpu: number): void {
    this.transactions += transactions;
    this.seconds += transactions / tps;
    this.cpu += cpu;
  }
  get tps(): number {
    return this.transactions / this.seconds;
  }
  /** CPU of the proxy process (pgbouncer or Custos) per transaction, µs. */
  get proxyCpu(): number {
    return this.cpu / this.transactions;
  }
}

async function pgbench(conn: string, mode: string, proxyPid: number | undefined, cell: Cell): Promise<void> {
  const before = proxyPid ? cpuMicros(proxyPid) : 0;
  const { stdout } = await run('pgbench', ['-n', '-S', '-M', mode, '-c', String(CLIENTS), '-j', '2', '-T', String(ROUND_SECONDS), conn], {
    timeout: (ROUND_SECONDS + 60) * 1000,
  });
  const used = proxyPid ? cpuMicros(proxyPid) - before : 0;
  const m = /tps = ([\d.]+) \((?:without initial connection time|excluding connections establishing)\)/.exec(stdout);
  const n = /number of transactions actually processed: (\d+)/.exec(stdout);
  if (!m || !n) throw new Error(`no tps in pgbench output:\n${stdout}`);
  cell.add(Number(n[1]), Number(m[1]), used);
}

function proxyConfig(policies: unknown[]): string {
  return stringify({
    catalog: 'bench',
    tenant: 'bench',
    dataPlane: { id: 'dp-bench' },
    audit: { verbose: false },
    tokenization: { secret: 'bench-tokenization-secret-0123456789' },
    users: [{ name: 'bench', password: 'bench', groups: ['analysts'] }],
    policies,
  });
}

const ACCOUNTS = ({ maskBalance, filter }: { maskBalance: boolean; filter: boolean }) => [{
  id: 'p-accounts', name: 'accounts',
  rules: [
    { id: 'r-filler', name: 'tokenize filler', condition: { groups: ['analysts'] }, fields: [{ schema: 'public', table: 'pgbench_accounts', field: 'filler' }],
      transformation: { regex: { regex: '[a-z]{12}', consistent: true } } },
    { id: 'r-balance', name: maskBalance ? 'tokenize balances' : 'keep balances', condition: { groups: ['analysts'] },
      fields: [{ schema: 'public', table: 'pgbench_accounts', field: 'abalance' }],
      transformation: maskBalance ? { numericRegex: { regex: '[1-9][0-9]{5}', consistent: true } } : { retain: {} } },
  ],
  filters: filter ? [{ schema: 'public', table: 'pgbench_accounts', field: 'bid', expression: 'bid > 0' }] : [],
}];
const UNTOUCHED = [{
  id: 'p-other', name: 'other table',
  rules: [{ id: 'r-1', name: 'mask', condition: { groups: ['analysts'] }, fields: [{ schema: 'public', table: 'bench_secret', field: 'v' }], transformation: { redactWithNull: {} } }],
  filters: [],
}];

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'dp-bench-'));
  chmodSync(dir, 0o777);
  const children: ChildProcess[] = [];
  try {
    await sql(ADMIN, `CREATE DATABASE ${DB}`);
    const dbUrl = `postgres://postgres@127.0.0.1:5432/${DB}`;
    await run('pgbench', ['-i', '-q', '-s', String(SCALE), dbUrl], { timeout: 300_000 });
    await sql(dbUrl, 'CREATE TABLE bench_secret (v text)');

    // pgbouncer: session pooling (one server connection per client, like the proxy), on its own port.
    const bouncerPort = await freePort();
    writeFileSync(join(dir, 'pgbouncer.ini'), [
      '[databases]', `${DB} = host=127.0.0.1 port=5432 dbname=${DB} user=postgres`,
      '[pgbouncer]', `listen_addr = 127.0.0.1`, `listen_port = ${bouncerPort}`, 'auth_type = any', 'pool_mode = session',
      'max_client_conn = 200', `default_pool_size = ${CLIENTS * 2}`, `unix_socket_dir =`, `logfile = ${join(dir, 'pgbouncer.log')}`,
      `pidfile = ${join(dir, 'pgbouncer.pid')}`, 'ignore_startup_parameters = extra_float_digits',
    ].join('\n'));
    chmodSync(join(dir, 'pgbouncer.ini'), 0o644);
    const bouncer = spawn('pgbouncer', ['-u', 'postgres', join(dir, 'pgbouncer.ini')], { stdio: 'ignore' });
    children.push(bouncer);
    await waitForPort(bouncerPort, bouncer);

    const proxies: Record<string, { conn: string; pid: number }> = {};
    const configs = [
      ['custos', UNTOUCHED], ['custos-retained', ACCOUNTS({ maskBalance: false, filter: false })],
      ['custos-masked', ACCOUNTS({ maskBalance: true, filter: false })], ['custos-masked-filtered', ACCOUNTS({ maskBalance: true, filter: true })],
    ] as const;
    for (const [name, policies] of configs) {
      const port = await freePort();
      writeFileSync(join(dir, `${name}.yaml`), proxyConfig(policies as unknown[]));
      const child = spawn(process.execPath, custosArgs('dataproxy', '--config', join(dir, `${name}.yaml`), '--upstream', dbUrl,
        '--listen', `127.0.0.1:${port}`, '--log-file', join(dir, `${name}-events.ndjson`)), { stdio: 'ignore', env: { ...process.env, CUSTOS_LOG_LEVEL: 'warn' } });
      children.push(child);
      await waitForPort(port, child);
      proxies[name] = { conn: `postgresql://bench:bench@127.0.0.1:${port}/${DB}?sslmode=disable`, pid: child.pid! };
    }

    const targets: [string, string, number | undefined][] = [
      ['direct', `${dbUrl}?sslmode=disable`, undefined],
      ['pgbouncer', `postgresql://postgres@127.0.0.1:${bouncerPort}/${DB}?sslmode=disable`, bouncer.pid],
      ['Custos, no protected table touched', proxies['custos']!.conn, proxies['custos']!.pid],
      ['Custos, policy on pgbench_accounts, columns read kept as they are', proxies['custos-retained']!.conn, proxies['custos-retained']!.pid],
      ['Custos, masking policy: the balance read is tokenized', proxies['custos-masked']!.conn, proxies['custos-masked']!.pid],
      ['Custos, masking + row filter on pgbench_accounts', proxies['custos-masked-filtered']!.conn, proxies['custos-masked-filtered']!.pid],
    ];
    const cells: Record<string, Record<string, Cell>> = {};
    const started = new Date().toISOString();
    const loads: number[] = [];
    // A mode's cells are interleaved round by round, each round starting one target later, so a change in the
    // machine's load hits every target of a mode alike (one long cell per target had put a load swing on one of them).
    for (const mode of MODES) {
      for (let round = 0; round < ROUNDS; round++) {
        for (let i = 0; i < targets.length; i++) {
          const [name, conn, pid] = targets[(i + round) % targets.length]!;
          process.stderr.write(`pgbench -S -M ${mode} ${name} (round ${round + 1}/${ROUNDS}, ${ROUND_SECONDS}s)…\n`);
          await pgbench(conn, mode, pid, ((cells[name] ??= {})[mode] ??= new Cell()));
          loads.push(loadavg()[0]!);
        }
      }
    }
    const bouncerCells = cells['pgbouncer']!;
    const plain = cells['Custos, no protected table touched']!;
    const lines = [
      `pgbench -S, ${CLIENTS} clients, 2 threads, ${ROUNDS} interleaved rounds of ${ROUND_SECONDS} s per cell, scale ${SCALE}; started ${started}, 1-minute load average ` +
        `after each round ${Math.min(...loads).toFixed(1)}–${Math.max(...loads).toFixed(1)}; tps excluding connection set-up, and the proxy ` +
        `process's CPU time (user + system) per transaction`,
      '',
      '| target | simple | extended | prepared | vs pgbouncer (s/e/p) | vs Custos unmasked (s/e/p) | proxy CPU µs/tx (s/e/p) |',
      '| --- | ---: | ---: | ---: | --- | --- | --- |',
    ];
    for (const [name, , pid] of targets) {
      const t = cells[name]!;
      const ratio = (base: Record<string, Cell>) => MODES.map((m) => `${((100 * t[m]!.tps) / base[m]!.tps).toFixed(0)} %`).join(' / ');
      const cpu = pid === undefined ? '' : MODES.map((m) => t[m]!.proxyCpu.toFixed(1)).join(' / ');
      lines.push(`| ${name} | ${MODES.map((m) => t[m]!.tps.toFixed(0)).join(' | ')} | ${ratio(bouncerCells)} | ${name.startsWith('Custos') ? ratio(plain) : ''} | ${cpu} |`);
    }
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    for (const c of children) c.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    await sql(ADMIN, `DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
