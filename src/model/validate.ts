import { randomUUID } from 'node:crypto';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
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

const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
ajv.addFormat('rfc3339', { type: 'string', validate: (s: string) => normalizeTimestamp(s) !== undefined });

const labelMap = { type: 'object', propertyNames: { maxLength: 1024 }, additionalProperties: { type: 'string', maxLength: 64 * 1024 } };
const checkEnvelope = ajv.compile({
  type: 'object',
  properties: {
    insertId: { type: 'string', minLength: 1, maxLength: 256 },
    logName: { type: 'string', minLength: 1, maxLength: 512, pattern: '^(projects|organizations|folders|billingAccounts)/[^/]+/logs/[^/]+$' },
    timestamp: { type: 'string', format: 'rfc3339' },
    receiveTimestamp: { type: 'string' },
    severity: { enum: [...SEVERITIES] },
    resource: { type: 'object', properties: { type: { type: 'string', minLength: 1, maxLength: 256 }, labels: labelMap }, required: ['type'], additionalProperties: false },
    labels: labelMap,
    categories: { type: 'array', maxItems: 64, items: { type: 'string', minLength: 1, maxLength: 128 } },
    jsonPayload: { type: 'object' },
    textPayload: { type: 'string' },
    organization: { type: 'string' },
  },
  required: ['logName'],
  additionalProperties: false,
});
const checkPayload: Record<string, ValidateFunction> = Object.fromEntries(Object.entries(PAYLOAD_SCHEMAS).map(([logId, schema]) => [logId, ajv.compile(schema)]));

/** Reasons in words a writer of entries understands, with the offending field named in the path. */
function toEntryErrors(errors: ErrorObject[], line: number, prefix: string[] = []): EntryError[] {
  return errors.map((e) => {
    const path = [...prefix, ...e.instancePath.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))];
    let reason = e.message ?? 'is not valid';
    if (e.keyword === 'required') path.push(String(e.params['missingProperty']));
    else if (e.keyword === 'additionalProperties') reason = `unknown field "${String(e.params['additionalProperty'])}"`;
    else if (e.keyword === 'format') reason = 'must be an RFC 3339 timestamp';
    else if (e.keyword === 'pattern' && path.join('.') === 'logName') reason = 'must look like projects/PROJECT/logs/LOG_ID';
    else if (e.keyword === 'enum') reason = `must be one of ${(e.params['allowedValues'] as unknown[]).join(', ')}`;
    return { line, field: path.join('.'), reason: e.keyword === 'required' ? 'is required' : reason };
  });
}

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
  if (!checkEnvelope(value)) return { errors: toEntryErrors(checkEnvelope.errors ?? [], line) };
  const input = value as LogEntryInput & { organization?: string };
  if (input.organization !== undefined) {
    return { errors: [{ line, field: 'organization', reason: 'is set by the server from the token; do not send it' }] };
  }
  if ((input.jsonPayload === undefined) === (input.textPayload === undefined)) {
    return { errors: [{ line, field: 'jsonPayload', reason: 'exactly one of jsonPayload or textPayload is required' }] };
  }
  const checkSeedPayload = input.jsonPayload && checkPayload[logIdOf(input.logName) ?? ''];
  if (checkSeedPayload && !checkSeedPayload(input.jsonPayload)) {
    return { errors: toEntryErrors(checkSeedPayload.errors ?? [], line, ['jsonPayload']) };
  }
  return { entry: input, errors: [] };
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
    resource: input.resource ? { type: input.resource.type, labels: input.resource.labels ?? {} } : { type: 'global', labels: {} },
    labels: input.labels ?? {},
    categories: mergeCategories(input.categories, input.jsonPayload),
    organization,
  };
  if (input.jsonPayload !== undefined) entry.jsonPayload = input.jsonPayload;
  if (input.textPayload !== undefined) entry.textPayload = input.textPayload;
  return entry;
}
