import { request } from 'node:http';
import { createServer, type Server, type Socket } from 'node:net';
import { componentLogger, splitHostPort } from '../telemetry/index.ts';
import { Attempt, relay } from './conn.ts';
import type { AgentRef, EgressConfig } from './config.ts';
import { dial, DialError, formatHostPort, HandshakeReader } from './io.ts';
import { egressMetrics } from './metrics.ts';
import { ipLiteral } from './policy.ts';
import { headerValue, parseAuthority, parseRequestHead, ProtocolError } from './wire.ts';

/**
 * Agent proxies: a process placed in a remote network that the egress proxy hands connections to. The protocol
 * between proxy and agent (docs/egress.md, "Agent protocol") is plain HTTP/1.1 on one port:
 *
 *   GET /healthz                    → 200 {"id": ID, "status": "ok", "open_tunnels": N}
 *   CONNECT <ip>:<port> HTTP/1.1    → 200 and a raw tunnel, or 502/504 with `Custos-Failure: connect_refused|…`
 *
 * The agent dials IP literals only: the proxy resolved the name, checked every address and tells the agent exactly
 * which one to dial, so policy stays in one place and the agent cannot be steered by a different DNS answer.
 */

export const AGENT_ID_HEADER = 'Custos-Agent-Id';
export const AGENT_FAILURE_HEADER = 'Custos-Failure';

export interface AgentServerOptions {
  id: string;
  listen: string;
  connectTimeoutMs?: number;
  idleMs?: number;
  handshakeMs?: number;
}

export interface AgentServer {
  id: string;
  address: string;
  close(): Promise<void>;
}

export async function startAgent(options: AgentServerOptions): Promise<AgentServer> {
  const log = componentLogger('egress-agent');
  const tunnels = new Set<Socket>();
  const connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
  const reply = (socket: Socket, status: string, headers: Record<string, string> = {}, body = ''): void => {
    const lines = [`HTTP/1.1 ${status}`, `${AGENT_ID_HEADER}: ${options.id}`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
    if (body) lines.push('Content-Type: application/json', `Content-Length: ${Buffer.byteLength(body)}`);
    socket.write(`${lines.join('\r\n')}\r\n\r\n${body}`);
  };

  const handle = async (client: Socket): Promise<void> => {
    client.on('error', () => {});
    const reader = new HandshakeReader(client, Date.now() + (options.handshakeMs ?? 10_000));
    let head;
    try {
      head = await reader.read((b) => parseRequestHead(b, 16 * 1024));
    } catch (err) {
      if (err instanceof ProtocolError) reply(client, '400 Bad Request', { Connection: 'close' });
      client.end();
      return;
    }
    if (head.method === 'GET' && head.target === '/healthz') {
      reply(client, '200 OK', { Connection: 'close' }, JSON.stringify({ id: options.id, status: 'ok', open_tunnels: tunnels.size }));
      client.end();
      return;
    }
    if (head.method !== 'CONNECT') {
      reply(client, '405 Method Not Allowed', { Connection: 'close' });
      client.end();
      return;
    }
    let target;
    try {
      target = parseAuthority(head.target);
      if (!ipLiteral(target.host)) throw new ProtocolError('MALFORMED_REQUEST', 'agents dial IP addresses only');
    } catch (err) {
      reply(client, '400 Bad Request', { Connection: 'close', [AGENT_FAILURE_HEADER]: 'protocol_error' });
      client.end();
      log.warn({ target: head.target, err: (err as Error).message }, 'rejected CONNECT');
      return;
    }
    const address = ipLiteral(target.host)!.toString();
    let upstream: Socket;
    try {
      upstream = await dial(address, target.port, connectTimeoutMs);
    } catch (err) {
      const reason = err instanceof DialError ? err.reason : 'connect_error';
      reply(client, reason === 'connect_timeout' ? '504 Gateway Timeout' : '502 Bad Gateway', { Connection: 'close', [AGENT_FAILURE_HEADER]: reason });
      client.end();
      return;
    }
    reply(client, '200 Connection Established');
    const rest = reader.takeRest();
    if (rest.length) upstream.write(rest);
    tunnels.add(client);
    // The agent's own accounting is not recorded as egress (the proxy writes the record); it only bounds idleness.
    const accounting = new Attempt('connect', formatHostPort(client.remoteAddress ?? '', client.remotePort ?? 0), 0, () => {});
    await new Promise<void>((done) => relay(client, upstream, accounting, { idleMs: options.idleMs ?? 300_000, upstreamBase: { read: 0, written: 0 } }, done));
    tunnels.delete(client);
    log.debug({ connection: headerValue(head, 'Custos-Connection-Id'), target: head.target }, 'tunnel closed');
  };

  const server: Server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
    handle(socket).catch((err: Error) => {
      log.error({ err }, 'agent connection handler failed');
      socket.destroy();
    });
  });
  const { host, port } = splitHostPort(options.listen);
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, host, resolve));
  const bound = server.address() as { address: string; port: number };
  const address = formatHostPort(bound.address, bound.port);
  log.info({ id: options.id, address }, 'egress agent listening');
  return {
    id: options.id,
    address,
    close: async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of tunnels) socket.destroy();
      });
    },
  };
}

// ---- the proxy's side: health checks and choosing an agent ----

interface AgentState {
  agent: AgentRef;
  policies: Set<string>;
  /** undefined until the first check answers. */
  healthy: boolean | undefined;
}

/**
 * Health checks every agent of every agent-proxy policy (`GET /healthz`, on an interval), and orders a policy's
 * agents for a connection: healthy ones first, rotated so load spreads, then never-checked ones. Agents that failed
 * their last check are skipped; a dial failure marks an agent down at once so the next connection fails over.
 */
export class AgentPool {
  private readonly states = new Map<string, AgentState>();
  private timer: NodeJS.Timeout | undefined;
  private rotation = 0;
  private readonly log = componentLogger('egress-agents');
  private settings: EgressConfig['agentHealth'] = { intervalMs: 2000, timeoutMs: 1000 };

  /** Adopts the agents of a (re)loaded config; agents that stay keep their health. */
  sync(config: EgressConfig): void {
    this.settings = config.agentHealth;
    const wanted = new Map<string, { agent: AgentRef; policies: Set<string> }>();
    for (const policy of config.policies) {
      for (const agent of policy.agents) {
        const key = agentKey(agent);
        const entry = wanted.get(key) ?? { agent, policies: new Set<string>() };
        entry.policies.add(policy.id);
        wanted.set(key, entry);
      }
    }
    for (const [key, state] of this.states) {
      if (!wanted.has(key)) {
        for (const policy of state.policies) egressMetrics.agentHealthy.remove({ policy, agent: state.agent.id });
        this.states.delete(key);
      }
    }
    for (const [key, { agent, policies }] of wanted) {
      const state = this.states.get(key);
      if (state) state.policies = policies;
      else this.states.set(key, { agent, policies, healthy: undefined });
    }
    clearInterval(this.timer);
    if (this.states.size) {
      void this.checkAll();
      this.timer = setInterval(() => void this.checkAll(), this.settings.intervalMs);
      this.timer.unref();
    }
  }

  /** The agents to try for a connection, in order; empty means no healthy agent. */
  candidates(agents: AgentRef[]): AgentRef[] {
    const states = agents.map((a) => this.states.get(agentKey(a))).filter((s): s is AgentState => s !== undefined);
    const healthy = states.filter((s) => s.healthy === true);
    const start = healthy.length ? this.rotation++ % healthy.length : 0;
    const rotated = [...healthy.slice(start), ...healthy.slice(0, start)];
    return [...rotated, ...states.filter((s) => s.healthy === undefined)].map((s) => s.agent);
  }

  markDown(agent: AgentRef, why: string): void {
    this.setHealth(agent, false, why);
  }

  health(): { id: string; address: string; healthy: boolean | undefined }[] {
    return [...this.states.values()].map((s) => ({ id: s.agent.id, address: s.agent.address, healthy: s.healthy }));
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Resolves after one round of checks (tests and startup use it to wait for a known state). */
  async checkAll(): Promise<void> {
    await Promise.all([...this.states.values()].map(async (state) => {
      const ok = await checkAgent(state.agent, this.settings.timeoutMs);
      this.setHealth(state.agent, ok.healthy, ok.detail);
    }));
  }

  private setHealth(agent: AgentRef, healthy: boolean, detail: string): void {
    const state = this.states.get(agentKey(agent));
    if (!state) return;
    if (state.healthy !== healthy) this.log[healthy ? 'info' : 'warn']({ agent: agent.id, address: agent.address, detail }, healthy ? 'agent healthy' : 'agent down');
    state.healthy = healthy;
    for (const policy of state.policies) egressMetrics.agentHealthy.set({ policy, agent: agent.id }, healthy ? 1 : 0);
  }
}

function agentKey(agent: AgentRef): string {
  return `${agent.id}@${agent.address}`;
}

function checkAgent(agent: AgentRef, timeoutMs: number): Promise<{ healthy: boolean; detail: string }> {
  return new Promise((resolve) => {
    const req = request({ host: agent.host, port: agent.port, path: '/healthz', method: 'GET', timeout: timeoutMs, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (body.length < 4096) body += chunk;
      });
      res.on('end', () => {
        let id: unknown;
        try {
          id = (JSON.parse(body) as { id?: unknown }).id;
        } catch {
          id = undefined;
        }
        // An agent answering with another id is a misrouted address, not the agent the policy names.
        if (res.statusCode === 200 && id === agent.id) resolve({ healthy: true, detail: 'ok' });
        else resolve({ healthy: false, detail: `healthz answered ${res.statusCode} for id ${JSON.stringify(id)}` });
      });
      res.on('error', () => resolve({ healthy: false, detail: 'healthz response broken' }));
    });
    req.on('timeout', () => req.destroy(new Error(`no healthz answer within ${timeoutMs} ms`)));
    req.on('error', (err) => resolve({ healthy: false, detail: err.message }));
    req.end();
  });
}
