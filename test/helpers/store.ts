import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { custosArgs } from './bin.ts';
import { loadServeConfig, startServer, type RunningServer } from '../../src/server/index.ts';

export const ADMIN = 'cst_test_admin_token_0123456789';

export interface TestStore {
  server: RunningServer;
  dataDir: string;
  call(path: string, token: string | undefined, init?: RequestInit): Promise<{ status: number; body: any }>; // eslint-disable-line @typescript-eslint/no-explicit-any
  write(token: string, entries: unknown[], query?: string): Promise<{ status: number; body: any }>; // eslint-disable-line @typescript-eslint/no-explicit-any
  list(token: string, request: Record<string, unknown>): Promise<{ status: number; body: any }>; // eslint-disable-line @typescript-eslint/no-explicit-any
  close(): Promise<void>;
}

/** A real store on a fresh data directory and an ephemeral loopback port. */
export async function startTestStore(overrides: Record<string, unknown> = {}, dataDir?: string): Promise<TestStore> {
  const dir = dataDir ?? (await mkdtemp(join(tmpdir(), 'custos-store-')));
  const config = { ...(await loadServeConfig()), data: dir, listen: '127.0.0.1:0', ...overrides };
  const server = await startServer(config, { CUSTOS_ADMIN_TOKEN: ADMIN });
  const call = async (path: string, token: string | undefined, init: RequestInit = {}) => {
    const res = await fetch(server.url + path, { ...init, headers: { ...(init.headers ?? {}), ...(token ? { authorization: `Bearer ${token}` } : {}) } });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // plain text (checkpoints, metrics)
    }
    return { status: res.status, body };
  };
  return {
    server,
    dataDir: dir,
    call,
    write: (token, entries, query = '') =>
      call(`/v1/entries:write${query}`, token, { method: 'POST', headers: { 'content-type': 'application/x-ndjson' }, body: entries.map((e) => (typeof e === 'string' ? e : JSON.stringify(e))).join('\n') + '\n' }),
    list: (token, request) => call('/v1/entries:list', token, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(request) }),
    close: async () => {
      await server.close();
      if (!dataDir) await rm(dir, { recursive: true, force: true });
    },
  };
}

export function entry(i: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    insertId: `e-${i}`,
    logName: 'projects/test/logs/app',
    timestamp: new Date(Date.UTC(2026, 10, 22, 6, 0, 0) + i * 1000).toISOString(),
    severity: 'INFO',
    jsonPayload: { message: `entry ${i}`, n: i },
    ...extra,
  };
}

/** `custos serve` as a child process on an ephemeral port; resolves with its URL once it listens. */
export async function spawnServe(dataDir: string, env: Record<string, string> = {}): Promise<{ child: import('node:child_process').ChildProcess; url: string }> {
  const { spawn } = await import('node:child_process');
  const child = spawn(process.execPath, custosArgs('serve', '--data', dataDir, '--port', '0'), {
    env: { ...process.env, CUSTOS_ADMIN_TOKEN: ADMIN, CUSTOS_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`custos serve did not start within 60 s: ${out}`)), 60_000);
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const match = /listening on (http:\/\/\S+)/.exec(out);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]!);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`custos serve exited with ${code}: ${out}`));
    });
  });
  return { child, url };
}
