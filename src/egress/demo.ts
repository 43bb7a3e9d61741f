import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { connect } from 'node:net';
import type { EntrySink } from '../ingest/sink.ts';
import { componentLogger, splitHostPort } from '../telemetry/index.ts';
import { startAgent } from './agent.ts';
import { parseEgressConfig } from './config.ts';
import { createRecordOutput } from './output.ts';
import { EgressProxy } from './proxy.ts';

/**
 * `custos serve --demo`: the proxy with a demo config (a direct policy, an agent-proxy policy with two in-process
 * agents), loopback servers standing in for a partner API and an on-prem database, and a little traffic every few
 * seconds — allowed direct, through an agent, and some denied — so real egress records appear at once.
 */
export const DEMO_SOURCE = { id: 'ri.source.sales-db', username: 'sales', password: 's3cret' };

async function listenHttp(body: string): Promise<{ server: HttpServer; port: number }> {
  const server = createHttpServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as { port: number }).port };
}

/** One request through the proxy as a client would send it (CONNECT then GET, or absolute-form GET). */
function demoRequest(proxy: { host: string; port: number }, kind: 'connect' | 'http', host: string, port: number): Promise<void> {
  return new Promise((resolve) => {
    const auth = Buffer.from(`${DEMO_SOURCE.username}:${DEMO_SOURCE.password}`).toString('base64');
    const socket = connect(proxy.port, proxy.host);
    const done = (): void => {
      socket.destroy();
      resolve();
    };
    socket.setTimeout(5000, done);
    socket.on('error', done).on('close', done);
    let established = kind === 'http';
    socket.on('data', (chunk: Buffer) => {
      if (!established && chunk.toString('latin1').startsWith('HTTP/1.1 200')) {
        established = true;
        socket.write(`GET /orders HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
      }
    });
    if (kind === 'connect') socket.write(`CONNECT ${host}:${port} HTTP/1.1\r\nHost: ${host}:${port}\r\nProxy-Authorization: Basic ${auth}\r\n\r\n`);
    else socket.write(`GET http://${host}:${port}/rows HTTP/1.1\r\nHost: ${host}:${port}\r\nProxy-Authorization: Basic ${auth}\r\nConnection: close\r\n\r\n`);
  });
}

export async function startDemo(options: { sink: EntrySink; project: string; listen?: string; intervalMs?: number }): Promise<{ stop(): Promise<void>; proxyUrl: string }> {
  const log = componentLogger('egress-demo');
  const partner = await listenHttp(JSON.stringify({ service: 'partner-api', ok: true }));
  const onprem = await listenHttp(JSON.stringify({ service: 'onprem-db', rows: 3 }));
  const agents = await Promise.all(['agent-1', 'agent-2'].map((id) => startAgent({ id, listen: '127.0.0.1:0' })));
  const closedPort = 9; // discard: nothing listens there on a demo machine, so the attempt is connect_refused.

  const document = (listen: string): unknown => ({
    listen,
    resolver: {
      hosts: {
        'api.partner.demo': ['127.0.0.1'],
        'db.onprem.demo': ['127.0.0.1'],
        // A name an attacker pointed at the cloud metadata service: refused, no cidr rule names it.
        'metadata.partner.demo': ['169.254.169.254'],
      },
    },
    policies: [
      {
        id: 'ri.egress.policy.partner-api',
        type: 'direct',
        allow: [
          { host: '*.partner.demo', ports: [80, 443] },
          { host: 'api.partner.demo', ports: [partner.port] },
          { cidr: '127.0.0.1/32', ports: [partner.port, closedPort] },
        ],
      },
      {
        id: 'ri.egress.policy.onprem',
        type: 'agent-proxy',
        agents: agents.map((a) => ({ id: a.id, address: a.address })),
        allow: [{ cidr: '127.0.0.0/8', ports: [onprem.port] }],
      },
    ],
    sources: [{ id: DEMO_SOURCE.id, credentials: { username: DEMO_SOURCE.username, password: DEMO_SOURCE.password }, policies: ['ri.egress.policy.partner-api', 'ri.egress.policy.onprem'] }],
  });

  const output = createRecordOutput({ sink: options.sink, project: options.project, proxyId: 'demo' });
  let proxy = new EgressProxy({ config: parseEgressConfig(document(options.listen ?? '127.0.0.1:3128'), 'demo config'), onRecord: (r) => output.write(r) });
  try {
    await proxy.start();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
    await proxy.close();
    proxy = new EgressProxy({ config: parseEgressConfig(document('127.0.0.1:0'), 'demo config'), onRecord: (r) => output.write(r) });
    await proxy.start();
  }
  await proxy.checkAgents();
  const bound = proxy.addresses()['http']!;
  const target = splitHostPort(bound);

  const round = async (): Promise<void> => {
    await Promise.all([
      demoRequest(target, 'connect', 'api.partner.demo', partner.port),
      demoRequest(target, 'http', 'db.onprem.demo', onprem.port),
      demoRequest(target, 'connect', 'exfil.example.com', 443),
      demoRequest(target, 'connect', 'metadata.partner.demo', 80),
      demoRequest(target, 'connect', '127.0.0.1', closedPort),
    ]);
  };
  let timer: NodeJS.Timeout | undefined;
  let running = true;
  const loop = async (): Promise<void> => {
    try {
      await round();
    } catch (err) {
      log.warn({ err }, 'demo traffic round failed');
    }
    if (running) timer = setTimeout(() => void loop(), options.intervalMs ?? 5000);
  };
  void loop();
  log.info({ proxy: bound }, 'egress demo running');

  return {
    proxyUrl: `http://${DEMO_SOURCE.username}:${DEMO_SOURCE.password}@${bound}`,
    async stop() {
      running = false;
      clearTimeout(timer);
      await proxy.close();
      await Promise.all(agents.map((a) => a.close()));
      await Promise.all([partner.server, onprem.server].map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
      await output.close();
    },
  };
}
