import { hash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { loadNativeAddon } from '../telemetry/index.ts';

/**
 * SHA-256 of many ranges of one buffer, each behind a one-byte prefix (0x00 for leaves, 0x01 for nodes):
 * `out[32·i …] = SHA-256(prefix ‖ buffer[ranges[2i], ranges[2i+1]))`. The native addon (native/hash.c, built by
 * `npm install`) does a whole batch in one call with the system's libcrypto; without it, node:crypto does the same
 * one digest at a time. Both give the same bytes (the tests compare them).
 */
export type HashRanges = (buffer: Uint8Array, ranges: Uint32Array, count: number, prefix: number, out: Uint8Array) => void;

/** `out[i]` = CRC-32 (zlib's) of `buffer[ranges[2i], ranges[2i+1])`: the record checksums of a batch in one call. */
export type Crc32Ranges = (buffer: Uint8Array, ranges: Uint32Array, count: number, out: Uint32Array) => void;

/**
 * For records laid out as length ‖ CRC-32 ‖ index (u64 BE) ‖ payload, with the payloads at `payloads` (start, end
 * pairs): writes index `firstIndex + i` before payload i, then the CRC-32 of index ‖ payload before that.
 */
export type StampRecords = (buffer: Uint8Array, payloads: Uint32Array, count: number, firstIndex: number) => void;

/** `hashRanges` on the addon's hashing thread; `done` runs on this thread after. Buffers must stay unchanged until then. */
export type HashRangesAsync = (buffer: Uint8Array, ranges: Uint32Array, count: number, prefix: number, out: Uint8Array, done: () => void) => void;

interface NativeDigest {
  hashRanges: HashRanges;
  hashRangesAsync?: HashRangesAsync;
  crc32Ranges?: Crc32Ranges;
  stampRecords?: StampRecords;
  digestSource: string;
}

const DIGEST_BYTES = 32;
let prefixed = Buffer.alloc(64 * 1024);

export const hashRangesPortable: HashRanges = (buffer, ranges, count, prefix, out) => {
  for (let i = 0; i < count; i++) {
    const start = ranges[2 * i] as number, end = ranges[2 * i + 1] as number;
    if (start > end || end > buffer.length) throw new RangeError('a range lies outside the buffer');
    if (prefixed.length < end - start + 1) prefixed = Buffer.alloc(Math.max(end - start + 1, prefixed.length * 2));
    prefixed[0] = prefix;
    prefixed.set(buffer.subarray(start, end), 1);
    out.set(hash('sha256', prefixed.subarray(0, end - start + 1), 'buffer'), i * DIGEST_BYTES);
  }
};

export const crc32RangesPortable: Crc32Ranges = (buffer, ranges, count, out) => {
  for (let i = 0; i < count; i++) {
    const start = ranges[2 * i] as number, end = ranges[2 * i + 1] as number;
    if (start > end || end > buffer.length) throw new RangeError('a range lies outside the buffer');
    out[i] = crc32(buffer.subarray(start, end));
  }
};

export const stampRecordsPortable: StampRecords = (buffer, payloads, count, firstIndex) => {
  const view = Buffer.from(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  for (let i = 0; i < count; i++) {
    const start = payloads[2 * i] as number, end = payloads[2 * i + 1] as number;
    if (start < 12 || start > end || end > buffer.length) throw new RangeError('a record lies outside the buffer');
    const index = firstIndex + i;
    view.writeUInt32BE(Math.floor(index / 2 ** 32), start - 8);
    view.writeUInt32BE(index % 2 ** 32, start - 4);
    view.writeUInt32BE(crc32(view.subarray(start - 8, end)), start - 12);
  }
};

const native = loadNativeAddon<NativeDigest>('custos_hash', {
  component: 'ledger', disabled: process.env['CUSTOS_PORTABLE_DIGEST'] === '1', fallback: 'hashing with node:crypto',
});

export const hashRanges: HashRanges = native?.hashRanges ?? hashRangesPortable;
/** Undefined without the addon: callers hash on their own thread instead. */
export const hashRangesAsync: HashRangesAsync | undefined = native?.hashRangesAsync;
export const crc32Ranges: Crc32Ranges = native?.crc32Ranges ?? crc32RangesPortable;
export const stampRecords: StampRecords = native?.stampRecords ?? stampRecordsPortable;
/** Which SHA-256 the ledger uses: `libcrypto.so.3` (native, system library), `node` (native, Node's own), or `node:crypto`. */
export const digestImplementation: string = native ? native.digestSource : 'node:crypto';
