import { closeSync } from 'node:fs';
import { isIP, Socket } from 'node:net';
import { lookup } from 'node:dns/promises';
import { componentLogger, loadNativeAddon } from '../telemetry/index.ts';
import { formatHostPort } from './io.ts';

/**
 * The native data plane for HTTP listeners (native/egress.c): accepts, reads the request head, dials the address the
 * proxy chose and relays on one epoll thread, without a Node socket per connection. The proxy keeps every decision
 * and record; this module only routes the plane's events to the proxy that owns the listener. A connection the
 * plane does not take (a malformed head, a slow client, or one the proxy gives back) arrives as a Node socket
 * through `handoff`, with the bytes already read. Without the addon (`npm install` did not build it), or with
 * CUSTOS_EGRESS_PLANE=node, every connection goes through Node's sockets instead.
 */

/** How a relayed tunnel ended, as the plane reports it. */
export type PlaneCloseReason = 'completed' | 'idle_timeout' | 'client_reset' | 'destination_reset' | 'aborted';
const CLOSE_REASONS: PlaneCloseReason[] = ['completed', 'idle_timeout', 'client_reset', 'destination_reset', 'aborted'];

export interface PlaneHandlers {
  /**
   * A complete CONNECT head. `verdict` 0: answer with `dial`, `refuse` or `handoff`. Otherwise the plane is already
   * dialling, on the remembered verdict of that number. `ageMs` is the time since accept.
   */
  connect(listener: number, tunnel: number, peer: string, target: string, authorization: string | undefined, ageMs: number, verdict: number): void;
  /** A complete forward-proxy request head (not CONNECT): answer with `dial` (with the origin-form head), `refuse` or `handoff`. */
  request(listener: number, tunnel: number, peer: string, head: Buffer, ageMs: number): void;
  /** A connection for the socket path, with what the plane read of it. */
  handoff(socket: Socket, bytes: Buffer, ageMs: number): void;
  /** The dial failed (errno code, or CONNECT_DEADLINE for the connect timeout): `dial` again, or `refuse`. */
  dialFailed(tunnel: number, code: string): void;
  /** The tunnel is closed; `connected` when its dial had succeeded (traffic left). */
  closed(tunnel: number, toUpstream: number, fromUpstream: number, reason: PlaneCloseReason, connected: boolean): void;
}

interface Addon {
  start(deliver: (events: unknown[]) => void): void;
  hold(on: boolean): void;
  listen(ip: string, port: number, maxHeadBytes: number, handshakeMs: number): [id: number, ip: string, port: number];
  configureListener(id: number, maxHeadBytes: number, handshakeMs: number): void;
  closeListener(id: number): void;
  dial(tunnel: number, ip: string, port: number, connectMs: number, idleMs: number, source: number, preamble?: Buffer): boolean;
  remember(
    listener: number,
    authorization: string | undefined,
    target: string,
    verdict: number,
    ip: string,
    port: number,
    connectMs: number,
    idleMs: number,
    source: number,
    sourceLimit: number,
  ): boolean;
  forget(): void;
  refuse(tunnel: number, reply: Buffer): void;
  handoff(tunnel: number): void;
  abort(tunnel: number): void;
}

const log = componentLogger('egress');

const addon = loadNativeAddon<Addon>('custos_egress', {
  component: 'egress', disabled: process.env['CUSTOS_EGRESS_PLANE'] === 'node' || process.platform !== 'linux', fallback: 'relaying through Node sockets',
});
const handlersByListener = new Map<number, PlaneHandlers>();
const tunnelOwners = new Map<number, PlaneHandlers>();
let openListeners = 0;
let nextSourceNumber = 0;
let held = false;
let started = false;

/** The plane's thread keeps the process alive only while it has listeners or tunnels the proxy waits on. */
function updateHold(): void {
  const want = openListeners > 0 || tunnelOwners.size > 0;
  if (want !== held) addon!.hold((held = want));
}

function adopt(fd: number): Socket | undefined {
  try {
    return new Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
  } catch (err) {
    log.error({ err: (err as Error).message }, 'egress plane handed over a socket Node could not adopt');
    closeSync(fd);
    return undefined;
  }
}

/** Fields after the type, per event type (call_js in native/egress.c writes them in this order). */
const EVENT_FIELDS: Record<number, number> = { 1: 8, 2: 5, 3: 2, 4: 5, 5: 6 };

/** A tunnel the proxy must answer or is waiting on: its owner hears of it until it closes or is handed over. */
function own(tunnel: number, listener: number): PlaneHandlers {
  const owner = handlersByListener.get(listener)!;
  tunnelOwners.set(tunnel, owner);
  updateHold();
  return owner;
}

function disown(tunnel: number): PlaneHandlers | undefined {
  const owner = tunnelOwners.get(tunnel);
  tunnelOwners.delete(tunnel);
  updateHold();
  return owner;
}

/** One event, its fields at `e[at]` on (read in place: no array per event). */
function handle(e: unknown[], type: number, at: number): void {
  const n = (k: number): number => e[at + k] as number;
  if (type === 1) {
    const peer = formatHostPort(e[at + 2] as string, n(3));
    own(n(1), n(0)).connect(n(0), n(1), peer, e[at + 4] as string, e[at + 5] as string | undefined, n(6), n(7));
  } else if (type === 2) {
    disown(n(1));
    const socket = adopt(n(2));
    if (socket) handlersByListener.get(n(0))!.handoff(socket, e[at + 3] as Buffer, n(4));
  } else if (type === 3) {
    tunnelOwners.get(n(0))?.dialFailed(n(0), e[at + 1] as string);
  } else if (type === 4) {
    disown(n(0))?.closed(n(0), n(1), n(2), CLOSE_REASONS[n(3)]!, n(4) === 1);
  } else {
    own(n(1), n(0)).request(n(0), n(1), formatHostPort(e[at + 2] as string, n(3)), e[at + 4] as Buffer, n(5));
  }
}

/** Events arrive as one flat array per batch: a type, then that type's fields. */
function deliver(events: unknown[]): void {
  for (let i = 0; i < events.length; ) {
    const type = events[i] as number;
    const fields = EVENT_FIELDS[type];
    if (fields === undefined) {
      log.error({ type }, 'unknown egress plane event; the rest of the batch is dropped');
      return;
    }
    try {
      handle(events, type, i + 1);
    } catch (err) {
      // One connection's handler failing must not lose the rest of the batch.
      log.error({ err }, 'egress plane event handler failed');
    }
    i += 1 + fields;
  }
}

export interface PlaneListener {
  /** `ip:port` or `[ip]:port` as bound. */
  bound: { address: string; port: number };
  configure(maxHeadBytes: number, handshakeMs: number): void;
  close(): void;
}

export const plane = addon
  ? {
      async listen(host: string, port: number, maxHeadBytes: number, handshakeMs: number, handlers: PlaneHandlers): Promise<PlaneListener> {
        if (!started) {
          addon.start(deliver);
          started = true;
        }
        const ip = isIP(host) ? host : (await lookup(host)).address;
        const [id, boundIp, boundPort] = addon.listen(ip, port, maxHeadBytes, handshakeMs);
        handlersByListener.set(id, handlers);
        openListeners++;
        updateHold();
        let open = true;
        return {
          bound: { address: boundIp, port: boundPort },
          configure: (max, ms) => addon.configureListener(id, max, ms),
          close: () => {
            if (!open) return;
            open = false;
            // The handlers stay: connections accepted before the close still arrive and are served.
            addon.closeListener(id);
            openListeners--;
            updateHold();
          },
        };
      },
      /**
       * False when `ip` is not an IP literal. `source` is a number from `sourceNumber`, counted against its limit.
       * With `preamble` the destination gets it first and the client no 200 (a forwarded request's origin-form head).
       */
      dial(tunnel: number, ip: string, port: number, connectMs: number, idleMs: number, source: number, preamble?: Buffer): boolean {
        return addon.dial(tunnel, ip, port, connectMs, idleMs, source, preamble);
      },
      /**
       * The plane will dial repeats of this CONNECT (same listener, Proxy-Authorization value and target) to `ip` by
       * itself while `source` is under `sourceLimit`, reporting `verdict` (non-zero) in their connect events.
       */
      remember(
        listener: number,
        authorization: string | undefined,
        target: string,
        verdict: number,
        dial: { ip: string; port: number; connectMs: number; idleMs: number },
        source: number,
        sourceLimit: number,
      ): boolean {
        return addon.remember(listener, authorization, target, verdict, dial.ip, dial.port, dial.connectMs, dial.idleMs, source, sourceLimit);
      },
      /** Drops every remembered verdict (the process's, every proxy's): for a reload. */
      forget(): void {
        addon.forget();
      },
      /** A process-wide number for a proxy's source, for the plane's per-source connection counts. */
      sourceNumber(): number {
        return nextSourceNumber++;
      },
      refuse(tunnel: number, reply: Buffer): void {
        disown(tunnel);
        addon.refuse(tunnel, reply);
      },
      handoff(tunnel: number): void {
        addon.handoff(tunnel);
      },
      abort(tunnel: number): void {
        addon.abort(tunnel);
      },
    }
  : undefined;
