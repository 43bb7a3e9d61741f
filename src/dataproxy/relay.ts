/**
 * The native relay (native/pgrelay.c): after a session's start-up and SCRAM exchange, both of its sockets move to
 * one epoll thread that frames the protocol and forwards it, so a query costs no Node socket read or write. The
 * relay forwards statements the session has decided before from its own cache, and reports each as a notice;
 * anything new comes back here as a decision request. Sessions keep every decision and write every event
 * (session.ts). Without the addon (not built, `CUSTOS_DATAPROXY_RELAY=node`, TLS, the embedded upstream) a session
 * stays on Node sockets, with the same behaviour.
 */
import type { Socket } from 'node:net';
import { componentLogger, loadNativeAddon } from '../telemetry/index.ts';
import type { LineTemplate } from './audit.ts';

interface Addon {
  start(onNotices: (batch: Buffer) => void): void;
  hold(on: boolean): void;
  adopt(id: number, clientFd: number, upstreamFd: number, clientBytes: Buffer, toClient: Buffer, log: number, authenticationLine: Buffer | null,
    maxQueryBytes: number): void;
  decided(id: number, send: Buffer | null, marker: Buffer | null, error: Buffer | null, key: Buffer | null, rewritten: Buffer | null, deadlineInMs: number,
    line: Buffer | null): void;
  close(id: number, toClient: Buffer | null): void;
  forget(): void;
  openLog(id: number, fd: number): void;
  appendLog(id: number, lines: Buffer): void;
  closeLog(id: number): void;
  linesWritten(): number;
}

/** What a relayed session answers to (the notices of native/pgrelay.c, in their order per session). */
export interface RelayedSession {
  /** A cached statement went upstream; `text` is the statement when it was cached by its template. */
  relayHit(entry: number, text: string | undefined): void;
  /** The relay asks about a Query, Parse or FunctionCall (the whole message); the answer is `decided`. */
  relayDecide(message: Buffer): void;
  /** The relay kept the session's last decision at `entry`. */
  relayCached(entry: number): void;
  relayClosed(reason: RelayCloseReason): void;
}

const RELAY_CLOSE_REASONS = ['terminated', 'client closed', 'database closed', 'protocol error', 'aborted'] as const;
export type RelayCloseReason = (typeof RELAY_CLOSE_REASONS)[number];

const NOTICE_HIT = 1;
const NOTICE_DECIDE = 2;
const NOTICE_CLOSED = 3;
const NOTICE_CACHED = 4;
const NOTICE_LOG_CLOSED = 5;
const NOTICE_LOG_FAILED = 6;

const log = componentLogger('dataproxy');

const addon = loadNativeAddon<Addon>('custos_pgrelay', {
  component: 'dataproxy', disabled: process.env['CUSTOS_DATAPROXY_RELAY'] === 'node' || process.platform !== 'linux', fallback: 'sessions relay through Node sockets',
});
const owners = new Map<number, RelayedSession>();
/** Logs the relay writes, by id: what resolves when each is closed. */
const logs = new Map<number, { path: string; closed?: () => void; closing?: Promise<void> }>();
let nextId = 1;
let started = false;
let held = false;
let epoch = '';

function updateHold(): void {
  const want = owners.size > 0 || logs.size > 0;
  if (want !== held) addon!.hold((held = want));
}

function onNotices(batch: Buffer): void {
  let at = 0;
  while (at + 5 <= batch.length) {
    const type = batch[at]!;
    const id = batch.readUInt32LE(at + 1);
    at += 5;
    const owner = owners.get(id);
    try {
      switch (type) {
        case NOTICE_HIT: {
          const entry = batch.readUInt32LE(at);
          const length = batch.readUInt32LE(at + 4);
          at += 8;
          const text = length > 0 ? batch.toString('utf8', at, at + length) : undefined;
          at += length;
          owner?.relayHit(entry, text);
          break;
        }
        case NOTICE_DECIDE: {
          const length = batch.readUInt32LE(at);
          at += 4;
          const message = batch.subarray(at, at + length);
          at += length;
          owner?.relayDecide(message);
          break;
        }
        case NOTICE_CACHED: {
          const entry = batch.readUInt32LE(at);
          at += 4;
          owner?.relayCached(entry);
          break;
        }
        case NOTICE_LOG_CLOSED:
          logs.get(id)?.closed?.();
          logs.delete(id);
          updateHold();
          break;
        case NOTICE_LOG_FAILED: {
          const errno = batch.readUInt32LE(at);
          at += 4;
          log.error({ errno, file: logs.get(id)?.path }, 'the audit log could not be written: lines are lost from here on');
          break;
        }
        case NOTICE_CLOSED: {
          const reason = RELAY_CLOSE_REASONS[batch[at]!] ?? 'aborted';
          at += 1;
          owners.delete(id);
          updateHold();
          owner?.relayClosed(reason);
          break;
        }
        default:
          log.error({ type, byte: at - 5 }, 'unknown relay notice type: the rest of the batch is dropped');
          return;
      }
    } catch (err) {
      // The rest of the batch belongs to other sessions: one session's failure ends that session only.
      log.error({ err, relay: id }, 'relay notice failed');
      if (owner && type !== NOTICE_CLOSED) addon!.close(id, null);
    }
  }
}

/** Whether sessions can be handed to the native relay in this process. */
export function relayAvailable(): boolean {
  return addon !== undefined;
}

function handleOf(socket: Socket): { fd: number; readStop(): number } | undefined {
  const handle = (socket as unknown as { _handle?: { fd?: number; readStop?: () => number } })._handle;
  if (!handle || typeof handle.fd !== 'number' || handle.fd < 0 || typeof handle.readStop !== 'function') return undefined;
  return handle as { fd: number; readStop(): number };
}

/** Whether the relay could take `socket`: a plain TCP socket Node still holds. */
export function canTake(socket: Socket): boolean {
  return handleOf(socket) !== undefined;
}

/**
 * Stops Node reading `socket` and returns its descriptor, which the relay duplicates; the caller then destroys the
 * Node socket (a close, never a shutdown: the relay's duplicate keeps the connection).
 */
export function takeDescriptor(socket: Socket): number | undefined {
  const handle = handleOf(socket);
  handle?.readStop();
  return handle?.fd;
}

/** Hands a session's two sockets to the relay; returns the id its notices carry. Throws when the relay cannot. */
function newId(): number {
  if (!started) {
    addon!.start(onNotices);
    started = true;
  }
  const id = nextId;
  nextId = nextId >= 0xffff_fffe ? 1 : nextId + 1;
  return id;
}

/**
 * Hands a session's two sockets to the relay; returns the id its notices carry. Throws when the relay cannot.
 * With `log` (an `openLog` id) and the session's user.authentication line, hits' events are written by the relay.
 */
export function adopt(owner: RelayedSession, clientFd: number, upstreamFd: number, clientBytes: Buffer, toClient: Buffer, maxQueryBytes: number,
  log?: { id: number; authenticationLine: LineTemplate }): number {
  const id = newId();
  addon!.adopt(id, clientFd, upstreamFd, clientBytes, toClient, log?.id ?? 0, log ? encodeTemplate(log.authenticationLine) : null, maxQueryBytes);
  owners.set(id, owner);
  updateHold();
  return id;
}

/** NDJSON lines to `fd` through the relay thread, in the order they are appended (see pgrelay.c). */
export function openLog(fd: number, path: string): number {
  const id = newId();
  addon!.openLog(id, fd);
  logs.set(id, { path });
  updateHold();
  return id;
}

export function appendLog(id: number, lines: Buffer): void {
  addon!.appendLog(id, lines);
}

/** Resolves once every line is written and no session writes to the log; the caller then closes the file. */
export function closeLog(id: number): Promise<void> {
  const entry = logs.get(id);
  if (!entry) return Promise.resolve();
  if (!entry.closing) {
    entry.closing = new Promise<void>((resolve) => (entry.closed = resolve));
    addon!.closeLog(id);
  }
  return entry.closing;
}

/** Cached statements whose two events the relay wrote itself (for the events counter). */
export function linesWritten(): number {
  return addon && started ? addon.linesWritten() : 0;
}

const SLOT_KINDS: Record<LineTemplate['slots'][number], number> = { id: 0, eventTime: 1, correlationId: 2, query: 3 };
const encodedTemplates = new WeakMap<LineTemplate, Buffer>();

/** A line template as pgrelay.c reads it: [u32 slots][u8 kind × slots][(u32 length, bytes) × (slots + 1)]. */
function encodeTemplate(t: LineTemplate): Buffer {
  let encoded = encodedTemplates.get(t);
  if (encoded) return encoded;
  const head = Buffer.alloc(4 + t.slots.length);
  head.writeUInt32LE(t.slots.length, 0);
  t.slots.forEach((slot, i) => (head[4 + i] = SLOT_KINDS[slot]));
  const parts: Buffer[] = [head];
  for (const text of t.text) {
    const length = Buffer.alloc(4);
    length.writeUInt32LE(text.length, 0);
    parts.push(length, text);
  }
  encoded = Buffer.concat(parts);
  encodedTemplates.set(t, encoded);
  return encoded;
}

export interface RelayDecision {
  /** Bytes upstream instead of the message; undefined: the message itself. */
  send?: Buffer;
  /** A refusal: the marker the relay watches for in upstream's ErrorResponse, and the error that replaces it. */
  refusal?: { marker: string; error: Buffer };
  /**
   * Kept for later: the statement's key as literals.ts or the Parse made it, its rewritten text (undefined:
   * unchanged), and the template of its policy.resolution line when the relay writes hits' events.
   */
  cache?: { key: string; rewritten: string | undefined; deadlineInMs: number; line: LineTemplate | undefined };
}

export function decided(id: number, d: RelayDecision): void {
  const c = d.cache;
  addon!.decided(id, d.send ?? null, d.refusal ? Buffer.from(d.refusal.marker) : null, d.refusal?.error ?? null,
    c ? Buffer.from(c.key) : null, c?.rewritten !== undefined ? Buffer.from(c.rewritten) : null, c?.deadlineInMs ?? -1, c?.line ? encodeTemplate(c.line) : null);
}

export function closeRelayed(id: number, toClient?: Buffer): void {
  addon!.close(id, toClient ?? null);
}

/** Every relayed session decides its statements again once the policies or the catalog (`key`) changed. */
export function noteDecisionEpoch(key: string): void {
  if (key === epoch) return;
  if (epoch !== '') addon?.forget();
  epoch = key;
}
