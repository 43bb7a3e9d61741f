import { Option } from 'commander';
import { clientToken } from '../ingest/sink.ts';

/** `--server` and `--token` as every client command takes them (env: CUSTOS_SERVER, CUSTOS_TOKEN). */
export const serverOption = () => new Option('--server <url>', 'Custos server URL').env('CUSTOS_SERVER');
export const tokenOption = () => new Option('--token <token>', 'API token (default: $CUSTOS_TOKEN)');
export const organizationOption = () => new Option('--organization <org>', 'organization to act on (admin tokens)');

export const DEFAULT_SERVER = 'http://127.0.0.1:8080';

/** Calls the API; a non-2xx answer becomes an Error carrying the server's own message. */
export async function callApi(server: string, path: string, token: string | undefined, init: RequestInit = {}): Promise<Response> {
  const auth = clientToken(token);
  let res: Response;
  try {
    res = await fetch(new URL(path, server), { ...init, headers: { ...(init.headers ?? {}), ...(auth ? { authorization: `Bearer ${auth}` } : {}) } });
  } catch (err) {
    throw new Error(`cannot reach ${server}: ${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}`, { cause: err });
  }
  if (!res.ok) {
    const text = await res.text();
    let message = text;
    try {
      const body = JSON.parse(text) as { error?: { message?: string; line?: number; column?: number } };
      message = body.error?.message ?? text;
    } catch {
      // not JSON: keep the text
    }
    const error = new Error(`${res.status}: ${message}`) as Error & { status: number; body: string };
    error.status = res.status;
    error.body = text;
    throw error;
  }
  return res;
}
