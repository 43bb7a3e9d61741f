import { collectDefaultMetrics, Registry } from 'prom-client';
import { createServer, type Server } from 'node:http';

/** The one metrics registry of the process; every component registers its metrics here. */
export const registry = new Registry();
collectDefaultMetrics({ register: registry, prefix: 'custos_process_' });

/**
 * Serves `/metrics` on its own listener, for producers that run without `custos serve`
 * (`custos netpol --metrics-listen`, `custos egress --metrics-listen`). Loopback unless told otherwise.
 */
export async function serveMetrics(listen: string): Promise<Server> {
  const { host, port } = splitHostPort(listen);
  const server = createServer(async (req, res) => {
    if (req.url === '/metrics') {
      res.writeHead(200, { 'content-type': registry.contentType });
      res.end(await registry.metrics());
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, host, resolve));
  return server;
}

/** `HOST:PORT`, `[v6]:PORT` or `PORT` → parts; the host defaults to loopback. */
export function splitHostPort(text: string, defaultHost = '127.0.0.1'): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(text) ?? /^()()(\d+)$/.exec(text);
  if (!m) throw new Error(`"${text}" is not HOST:PORT`);
  const port = Number(m[3]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`"${text}": port out of range`);
  return { host: m[1] || m[2] || defaultHost, port };
}
