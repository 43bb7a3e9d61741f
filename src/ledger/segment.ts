import { open } from 'node:fs/promises';
import { crc32Ranges, stampRecords } from './digest.ts';
import { leafHashes, leafHashesAsync } from './merkle.ts';

/**
 * Segment file format (one file per run of entries of one organization, named by its first entry index):
 *   header  24 bytes: "CUSTOSL1" ‖ first index (u64 BE) ‖ creation time in ms (u64 BE)
 *   record  16 bytes: payload length (u32 BE) ‖ CRC-32 of (index ‖ payload) (u32 BE) ‖ index (u64 BE), then the
 *           payload: the entry's canonical JSON bytes, exactly what the Merkle leaf hashes.
 * The index and checksum let recovery find a torn tail and let verify name the exact record that was deleted,
 * reordered or damaged; the Merkle root catches whatever rewrites them consistently.
 */
export const SEGMENT_MAGIC = Buffer.from('CUSTOSL1', 'latin1');
export const SEGMENT_HEADER_BYTES = 24;
export const RECORD_HEADER_BYTES = 16;
export const MAX_RECORD_BYTES = 16 * 1024 * 1024;
const SEGMENT_NAME = /^(\d{20})\.seg$/;
const TWO_32 = 2 ** 32;

export function segmentFileName(firstIndex: number): string {
  return `${String(firstIndex).padStart(20, '0')}.seg`;
}

export function segmentFirstIndex(name: string): number | undefined {
  const match = SEGMENT_NAME.exec(name);
  return match ? Number(match[1]) : undefined;
}

export interface SegmentHeader {
  firstIndex: number;
  createdMs: number;
}

function writeU64(buffer: Buffer, value: number, offset: number): void {
  buffer.writeUInt32BE(Math.floor(value / TWO_32), offset);
  buffer.writeUInt32BE(value % TWO_32, offset + 4);
}

function readU64(buffer: Buffer, offset: number): number {
  return buffer.readUInt32BE(offset) * TWO_32 + buffer.readUInt32BE(offset + 4);
}

export function encodeSegmentHeader(header: SegmentHeader): Buffer {
  const buffer = Buffer.alloc(SEGMENT_HEADER_BYTES);
  SEGMENT_MAGIC.copy(buffer, 0);
  writeU64(buffer, header.firstIndex, 8);
  writeU64(buffer, header.createdMs, 16);
  return buffer;
}

export function decodeSegmentHeader(buffer: Buffer): SegmentHeader | undefined {
  if (buffer.length < SEGMENT_HEADER_BYTES || !buffer.subarray(0, 8).equals(SEGMENT_MAGIC)) return undefined;
  return { firstIndex: readU64(buffer, 8), createdMs: readU64(buffer, 16) };
}

/**
 * The records of one append, framed as they go to disk before their indexes are known (those are stamped when the
 * group commit orders the batch). Each payload's leaf hash is taken in place: the byte just before the payload
 * (the index's last byte, not yet written) briefly holds the RFC 6962 leaf prefix 0x00, which spares a copy.
 */
/**
 * Buffers of committed batches, reused by the next ones: a batch of 1,000 entries needs about 600 KB, and a fresh
 * allocation of that size for every batch makes the garbage collector run several times as often.
 */
const spareBuffers: Buffer[] = [];
const MAX_SPARE_BUFFERS = 8;
const MAX_SPARE_BYTES = 16 * 1024 * 1024;

export class RecordBatch {
  private buffer: Buffer;
  private used = 0;
  private records = 0;
  private leaves: Buffer | undefined;
  private hashing: Promise<void> | undefined;
  /** Start and end of each payload in `buffer`. */
  private ranges: Uint32Array;

  constructor(expectedBytes = 64 * 1024, expectedRecords = 64) {
    const spare = spareBuffers.findIndex((buffer) => buffer.length >= expectedBytes);
    this.buffer = spare >= 0 ? (spareBuffers.splice(spare, 1)[0] as Buffer) : Buffer.allocUnsafe(expectedBytes);
    this.ranges = new Uint32Array(2 * expectedRecords);
  }

  get count(): number {
    return this.records;
  }

  get byteLength(): number {
    return this.used;
  }

  /** Appends one payload given as a string (UTF-8 encoded here) or bytes; returns its byte length. */
  add(payload: string | Uint8Array): number {
    const maxBytes = typeof payload === 'string' ? payload.length * 3 : payload.length;
    this.reserve(RECORD_HEADER_BYTES + maxBytes);
    const start = this.used + RECORD_HEADER_BYTES;
    const length = typeof payload === 'string' ? this.buffer.write(payload, start, 'utf8') : (this.buffer.set(payload, start), payload.length);
    if (length > MAX_RECORD_BYTES) throw new RangeError(`entry of ${length} bytes exceeds the record limit of ${MAX_RECORD_BYTES}`);
    this.buffer.writeUInt32BE(length, this.used);
    if (2 * this.records + 2 > this.ranges.length) {
      const bigger = new Uint32Array(this.ranges.length * 2);
      bigger.set(this.ranges);
      this.ranges = bigger;
    }
    this.leaves = undefined;
    this.hashing = undefined;
    this.ranges[2 * this.records] = start;
    this.ranges[2 * this.records + 1] = start + length;
    this.records++;
    this.used = start + length;
    return length;
  }

  /** Hands the buffer to later batches; nothing of this batch (nor what `number` returned) may be used afterwards. */
  recycle(): void {
    if (spareBuffers.length < MAX_SPARE_BUFFERS && this.buffer.length <= MAX_SPARE_BYTES) spareBuffers.push(this.buffer);
    this.buffer = Buffer.alloc(0);
    this.used = 0;
    this.records = 0;
    this.leaves = undefined;
    this.hashing = undefined;
  }

  /**
   * The Merkle leaf hash of every record, in order, 32 bytes each: those `hashLeaves` computed, or hashed here in
   * one batch when first asked for.
   */
  leafHashes(): Buffer {
    this.leaves ??= leafHashes(this.buffer, this.ranges, this.records);
    return this.leaves;
  }

  /**
   * `leafHashes` on the addon's hashing thread, started by the first call; settles once they are there. The ledger
   * starts it before queueing the batch, so the batch is written and synced while it is hashed (the tree needs the
   * hashes only once the batch is durable). Nothing may be added to the batch afterwards; stamping (`number`) writes
   * only the record headers, which the hashing does not read.
   */
  hashLeaves(): Promise<void> {
    this.hashing ??= leafHashesAsync(this.buffer, this.ranges, this.records).then((leaves) => {
      this.leaves = leaves;
    });
    return this.hashing;
  }

  private reserve(bytes: number): void {
    if (this.used + bytes <= this.buffer.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.buffer.length * 2, this.used + bytes));
    this.buffer.copy(bigger, 0, 0, this.used);
    this.buffer = bigger;
  }

  /** Stamps indexes from `firstIndex` and the checksums; returns the bytes to write. */
  number(firstIndex: number): Buffer {
    stampRecords(this.buffer, this.ranges, this.records, firstIndex);
    return this.buffer.subarray(0, this.used);
  }
}

/** The records for `payloads`, numbered from `firstIndex`, as one buffer. */
export function encodeRecords(firstIndex: number, payloads: readonly Uint8Array[]): Buffer {
  const batch = new RecordBatch(payloads.reduce((n, p) => n + RECORD_HEADER_BYTES + p.length, 0), payloads.length);
  for (const payload of payloads) batch.add(payload);
  return batch.number(firstIndex);
}

export interface RecordProblem {
  code: 'BAD_RECORD' | 'SEQUENCE_GAP';
  /** Byte offset of the record in its segment file. */
  offset: number;
  /** The index the record should have had. */
  index: number;
  reason: string;
  /** The file ends inside this record: the shape a crash leaves behind. */
  incomplete: boolean;
}

export type RecordVisitor = (index: number, payload: Buffer) => void;
/**
 * Receives the good records of one chunk at once: `count` payloads at `ranges` (start, end pairs) of `chunk`, with
 * indexes from `firstIndex`. The views are only valid during the call.
 */
export type RecordRunVisitor = (chunk: Buffer, ranges: Uint32Array, count: number, firstIndex: number) => void;

/** A per-record visitor, or `{ run }` for whole runs of records (batch hashing). */
export type RecordVisitors = RecordVisitor | { run: RecordRunVisitor };

export interface SegmentScan {
  header?: SegmentHeader;
  /** Bytes up to the end of the last good record. */
  validLength: number;
  fileLength: number;
  nextIndex: number;
  problem?: RecordProblem;
}

interface ChunkScan {
  /** Offset in the chunk after the last complete good record. */
  consumed: number;
  nextIndex: number;
  problem?: RecordProblem;
}

let checkRanges = new Uint32Array(2 * 4096);
let payloadRanges = new Uint32Array(2 * 4096);
let checksums = new Uint32Array(4096);

/**
 * Walks the records in `chunk[0, filled)`, whose first byte is at file offset `base`. A record cut by the chunk's
 * end is left for the next chunk unless `final`, when it is a torn record. The framing is walked first, then the
 * checksums of every complete record are computed in one batch and compared in order; the good records before
 * the first problem are visited, then the problem is returned.
 */
function scanChunk(chunk: Buffer, filled: number, base: number, firstIndex: number, final: boolean, visit: RecordVisitors): ChunkScan {
  let offset = 0;
  let count = 0;
  let framing: ChunkScan | undefined;
  const problemAt = (at: number, index: number, code: RecordProblem['code'], reason: string, incomplete: boolean): ChunkScan => ({
    consumed: at, nextIndex: index, problem: { code, offset: base + at, index, reason, incomplete },
  });
  while (offset < filled) {
    const remaining = filled - offset;
    if (remaining < RECORD_HEADER_BYTES) {
      if (final) framing = problemAt(offset, firstIndex + count, 'BAD_RECORD', `data ends inside a record header (${remaining} bytes)`, true);
      break;
    }
    const length = chunk.readUInt32BE(offset);
    if (length > MAX_RECORD_BYTES) {
      framing = problemAt(offset, firstIndex + count, 'BAD_RECORD', `record length ${length} exceeds ${MAX_RECORD_BYTES}`, final);
      break;
    }
    const end = offset + RECORD_HEADER_BYTES + length;
    if (end > filled) {
      if (final) framing = problemAt(offset, firstIndex + count, 'BAD_RECORD', `data ends inside a record (${remaining} of ${RECORD_HEADER_BYTES + length} bytes)`, true);
      break;
    }
    if (2 * count + 2 > checkRanges.length) {
      checkRanges = grown(checkRanges);
      payloadRanges = grown(payloadRanges);
      checksums = grown(checksums);
    }
    checkRanges[2 * count] = offset + 8; // the checksum covers the index and the payload
    checkRanges[2 * count + 1] = end;
    count++;
    offset = end;
  }
  crc32Ranges(chunk, checkRanges, count, checksums);
  let good = 0;
  let problem: ChunkScan | undefined;
  for (; good < count; good++) {
    const start = checkRanges[2 * good] as number;
    const end = checkRanges[2 * good + 1] as number;
    const index = firstIndex + good;
    if (checksums[good] !== chunk.readUInt32BE(start - 4)) {
      problem = problemAt(start - 8, index, 'BAD_RECORD', 'record checksum mismatch', final && end === filled);
      break;
    }
    const stored = readU64(chunk, start);
    if (stored !== index) {
      problem = problemAt(start - 8, index, 'SEQUENCE_GAP', `record holds entry ${stored} where entry ${index} belongs`, false);
      break;
    }
    payloadRanges[2 * good] = start + 8;
    payloadRanges[2 * good + 1] = end;
  }
  if (typeof visit === 'function') {
    for (let i = 0; i < good; i++) visit(firstIndex + i, chunk.subarray(payloadRanges[2 * i] as number, payloadRanges[2 * i + 1] as number));
  } else if (good > 0) {
    visit.run(chunk, payloadRanges, good, firstIndex);
  }
  if (problem) return problem;
  const consumed = good === 0 ? 0 : (checkRanges[2 * good - 1] as number);
  return framing ?? { consumed, nextIndex: firstIndex + good };
}

function grown<T extends Uint32Array>(array: T): T {
  const bigger = new Uint32Array(array.length * 2);
  bigger.set(array);
  return bigger as T;
}

function headerProblem(header: SegmentHeader | undefined, bytes: Buffer, expectedFirstIndex: number): RecordProblem | undefined {
  if (header === undefined) {
    const incomplete = bytes.length < SEGMENT_HEADER_BYTES && SEGMENT_MAGIC.subarray(0, bytes.length).equals(bytes);
    return { code: 'BAD_RECORD', offset: 0, index: expectedFirstIndex, reason: 'segment header is missing or damaged', incomplete };
  }
  if (header.firstIndex !== expectedFirstIndex) {
    return { code: 'SEQUENCE_GAP', offset: 0, index: expectedFirstIndex, reason: `segment starts at entry ${header.firstIndex}, expected ${expectedFirstIndex}`, incomplete: false };
  }
  return undefined;
}

/** Scans a whole segment held in memory (an archived object). */
export function scanSegmentBytes(bytes: Buffer, expectedFirstIndex: number, visit: RecordVisitors): { nextIndex: number; problem?: RecordProblem } {
  const header = decodeSegmentHeader(bytes.subarray(0, SEGMENT_HEADER_BYTES));
  const problem = headerProblem(header, bytes.subarray(0, SEGMENT_HEADER_BYTES), expectedFirstIndex);
  if (problem) return { nextIndex: expectedFirstIndex, problem };
  const body = bytes.subarray(SEGMENT_HEADER_BYTES);
  const scan = scanChunk(body, body.length, SEGMENT_HEADER_BYTES, expectedFirstIndex, true, visit);
  return scan.problem ? { nextIndex: scan.nextIndex, problem: scan.problem } : { nextIndex: scan.nextIndex };
}

/**
 * Reads a segment file in large chunks and calls `visit` for every good record in order (the payload view is
 * only valid during the call). Stops at the first record that is torn, damaged or out of sequence.
 */
export async function scanSegment(path: string, expectedFirstIndex: number, visit: RecordVisitors, chunkBytes = 8 * 1024 * 1024): Promise<SegmentScan> {
  const file = await open(path, 'r');
  try {
    const fileLength = (await file.stat()).size;
    const headerBytes = Buffer.alloc(SEGMENT_HEADER_BYTES);
    const { bytesRead } = await file.read(headerBytes, 0, SEGMENT_HEADER_BYTES, 0);
    const header = decodeSegmentHeader(headerBytes.subarray(0, bytesRead));
    const problem = headerProblem(header, headerBytes.subarray(0, bytesRead), expectedFirstIndex);
    if (problem || header === undefined) return { validLength: 0, fileLength, nextIndex: expectedFirstIndex, ...(header ? { header } : {}), ...(problem ? { problem } : {}) };
    let chunk = Buffer.allocUnsafe(chunkBytes);
    let filled = 0; // bytes of `chunk` holding file data that starts at file offset `base`
    let base = SEGMENT_HEADER_BYTES;
    let nextIndex = expectedFirstIndex;
    while (true) {
      if (filled === chunk.length) {
        // one record larger than the chunk: grow it
        const bigger = Buffer.allocUnsafe(chunk.length * 2);
        chunk.copy(bigger, 0, 0, filled);
        chunk = bigger;
      }
      const position = base + filled;
      const read = position < fileLength ? (await file.read(chunk, filled, chunk.length - filled, position)).bytesRead : 0;
      filled += read;
      const final = base + filled >= fileLength || read === 0;
      const scan = scanChunk(chunk, filled, base, nextIndex, final, visit);
      nextIndex = scan.nextIndex;
      if (scan.problem) return { header, validLength: scan.problem.offset, fileLength, nextIndex, problem: scan.problem };
      if (final) return { header, validLength: base + scan.consumed, fileLength, nextIndex };
      chunk.copy(chunk, 0, scan.consumed, filled);
      base += scan.consumed;
      filled -= scan.consumed;
    }
  } finally {
    await file.close();
  }
}
