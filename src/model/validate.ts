import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { mergeCategories } from './categories.ts';
import { type LogEntry, type LogEntryInput, logIdOf, SEVERITIES } from './entry.ts';
import { PAYLOAD_SCHEMAS } from './payloads.ts';
import { normalizeTimestamp, nowTimestamp } from './time.ts';

/** What is wrong and where: `line` is 1-based (NDJSON line, or position in a JSON `entries` array). */
export interface EntryError {
  line: number;
  field: string;
  reason: string;
  /** Byte offset of the line's start in the request body, when the body was NDJSON. */
  offset?: number;
}

export interface ValidationLimits {
  /** Largest serialized entry, in bytes (Cloud Logging's limit is 256 KiB). */
  maxEntryBytes: number;
  /** Deepest nesting of objects and arrays inside one entry. */
  maxDepth: number;
  /** Most entries in one request. */
  maxEntries: number;
}

export const DEFAULT_LIMITS: ValidationLimits = { maxEntryBytes: 256 * 1024, maxDepth: 64, maxEntries: 100_000 };

const labelMap = z.record(z.string().max(1024), z.string().max(64 * 1024));
const entrySchema = z
  .object({
    insertId: z.string().min(1).max(256).optional(),
    logName: z.string().min(1).max(512).regex(/^(projects|organizations|folders|billingAccounts)\/[^/]+\/logs\/[^/]+$/, {
      message: 'must look like projects/PROJECT/logs/LOG_ID',
    }),
    timestamp: z.string().refine((s) => normalizeTimestamp(s) !== undefined, 'must be an RFC 3339 timestamp').optional(),
    receiveTimestamp: z.string().optional(),
    severity: z.enum(SEVERITIES).optional(),
    resource: z.object({ type: z.string().min(1).max(256), labels: labelMap.default({}) }).optional(),
    labels: labelMap.optional(),
    categories: z.array(z.string().min(1).max(128)).max(64).optional(),
    jsonPayload: z.record(z.string(), z.unknown()).optional(),
    textPayload: z.string().optional(),
    organization: z.string().optional(),
  })
  .strict()
  .refine((e) => (e.jsonPayload === undefined) !== (e.textPayload === undefined), {
    message: 'exactly one of jsonPayload or textPayload is required',
    path: ['jsonPayload'],
  });

function depthOf(value: unknown, limit: number): number {
  // Iterative, so a hostile entry cannot overflow the stack of the validator itself.
  let deepest = 0;
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length) {
    const [v, d] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (d > deepest) deepest = d;
    if (deepest > limit) return deepest;
    for (const child of Array.isArray(v) ? v : Object.values(v)) stack.push([child, d + 1]);
  }
  return deepest;
}

/** Checks one parsed entry; returns the typed input or the errors, field paths dotted (`resource.labels.x`). */
export function validateEntry(value: unknown, line: number, limits: ValidationLimits = DEFAULT_LIMITS): { entry?: LogEntryInput; errors: EntryError[] } {
  if (depthOf(value, limits.maxDepth) > limits.maxDepth) {
    return { errors: [{ line, field: '', reason: `nesting deeper than ${limits.maxDepth} levels` }] };
  }
  const result = entrySchema.safeParse(value);
  if (result.success) {
    if (result.data.organization !== undefined) {
      return { errors: [{ line, field: 'organization', reason: 'is set by the server from the token; do not send it' }] };
    }
    const payloadSchema = result.data.jsonPayload && PAYLOAD_SCHEMAS[logIdOf(result.data.logName) ?? ''];
    const payload = payloadSchema?.safeParse(result.data.jsonPayload);
    if (payload && !payload.success) {
      return { errors: payload.error.issues.map((issue) => ({ line, field: ['jsonPayload', ...issue.path.map(String)].join('.'), reason: issue.message })) };
    }
    return { entry: result.data as LogEntryInput, errors: [] };
  }
  return {
    errors: result.error.issues.map((issue) => ({ line, field: issue.path.map(String).join('.'), reason: issue.message })),
  };
}

export class BodyError extends Error {
  constructor(
    readonly status: 400 | 413,
    readonly errors: EntryError[],
  ) {
    super(errors.map((e) => `line ${e.line}${e.field ? ` field ${e.field}` : ''}: ${e.reason}`).join('; '));
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function decodeUtf8(bytes: Uint8Array, lineOf: (offset: number) => number): string {
  try {
    return utf8.decode(bytes);
  } catch {
    // Find the first bad byte so the error can point at it.
    let offset = 0;
    for (let step = 1 << 16; step >= 1; step >>= 1) {
      while (offset + step <= bytes.length) {
        try {
          utf8.decode(bytes.subarray(0, offset + step));
          offset += step;
        } catch {
          break;
        }
      }
    }
    throw new BodyError(400, [{ line: lineOf(offset), field: '', reason: `invalid UTF-8 at byte offset ${offset}`, offset }]);
  }
}

/**
 * Parses a write body: a JSON object `{entries:[…]}` (or a bare array) or NDJSON, one entry a line. All or nothing:
 * any error rejects the whole batch, and every bad line is named.
 */
export function parseWriteBody(body: Uint8Array, limits: ValidationLimits = DEFAULT_LIMITS): LogEntryInput[] {
  const lineOf = (offset: number) => {
    let n = 1;
    for (let i = 0; i < offset && i < body.length; i++) if (body[i] === 0x0a) n++;
    return n;
  };
  const text = decodeUtf8(body, lineOf);
  const trimmed = text.trimStart();
  const errors: EntryError[] = [];
  const entries: LogEntryInput[] = [];
  let tooLarge = false;

  const accept = (value: unknown, line: number, bytes: number, offset?: number) => {
    if (bytes > limits.maxEntryBytes) {
      tooLarge = true;
      errors.push({ line, field: '', reason: `entry is ${bytes} bytes, over the ${limits.maxEntryBytes}-byte limit`, ...(offset === undefined ? {} : { offset }) });
      return;
    }
    const { entry, errors: found } = validateEntry(value, line, limits);
    if (entry) entries.push(entry);
    for (const e of found) errors.push(offset === undefined ? e : { ...e, offset });
  };

  const looksLikeEnvelope = trimmed.startsWith('[') || (trimmed.startsWith('{') && /^\{\s*"entries"\s*:/.test(trimmed));
  if (looksLikeEnvelope) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new BodyError(400, [{ line: 1, field: '', reason: `malformed JSON: ${(err as Error).message}` }]);
    }
    const list = Array.isArray(parsed) ? parsed : (parsed as { entries?: unknown }).entries;
    if (!Array.isArray(list)) throw new BodyError(400, [{ line: 1, field: 'entries', reason: 'must be an array of entries' }]);
    if (list.length > limits.maxEntries) throw new BodyError(413, [{ line: 1, field: 'entries', reason: `more than ${limits.maxEntries} entries in one request` }]);
    list.forEach((value, i) => accept(value, i + 1, Buffer.byteLength(JSON.stringify(value) ?? '')));
  } else {
    let offset = 0;
    let line = 0;
    let nextByteOffset = 0;
    while (offset < text.length) {
      let end = text.indexOf('\n', offset);
      if (end < 0) end = text.length;
      line++;
      const full = text.slice(offset, end);
      const raw = full.endsWith('\r') ? full.slice(0, -1) : full;
      const byteOffset = nextByteOffset;
      nextByteOffset += Buffer.byteLength(full) + 1;
      if (raw.trim() !== '') {
        if (entries.length + errors.length >= limits.maxEntries) {
          throw new BodyError(413, [{ line, field: '', reason: `more than ${limits.maxEntries} entries in one request`, offset: byteOffset }]);
        }
        const bytes = Buffer.byteLength(raw);
        if (bytes > limits.maxEntryBytes) accept(undefined, line, bytes, byteOffset);
        else {
          let value: unknown;
          try {
            value = JSON.parse(raw);
          } catch (err) {
            errors.push({ line, field: '', reason: `malformed JSON: ${(err as Error).message}`, offset: byteOffset });
            offset = end + 1;
            continue;
          }
          accept(value, line, bytes, byteOffset);
        }
      }
      offset = end + 1;
    }
  }
  if (errors.length) throw new BodyError(tooLarge && errors.every((e) => e.reason.includes('-byte limit')) ? 413 : 400, errors);
  if (entries.length === 0) throw new BodyError(400, [{ line: 1, field: 'entries', reason: 'no entries in the request' }]);
  return entries;
}

/** Completes a validated input into the stored form: organization, insertId, timestamps, categories. */
export function completeEntry(input: LogEntryInput, organization: string, receiveTimestamp = nowTimestamp()): LogEntry {
  const entry: LogEntry = {
    insertId: input.insertId ?? randomUUID(),
    logName: input.logName,
    timestamp: input.timestamp === undefined ? receiveTimestamp : normalizeTimestamp(input.timestamp)!,
    receiveTimestamp,
    severity: input.severity ?? 'DEFAULT',
    resource: input.resource ?? { type: 'global', labels: {} },
    labels: input.labels ?? {},
    categories: mergeCategories(input.categories, input.jsonPayload),
    organization,
  };
  if (input.jsonPayload !== undefined) entry.jsonPayload = input.jsonPayload;
  if (input.textPayload !== undefined) entry.textPayload = input.textPayload;
  return entry;
}
