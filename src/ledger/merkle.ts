import { hash } from 'node:crypto';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { hashRanges, hashRangesAsync } from './digest.ts';
import { componentLogger } from '../telemetry/index.ts';
import { LedgerError } from './errors.ts';

/**
 * The RFC 6962 §2.1 Merkle tree (C2SP merkle-tree): leaf = SHA-256(0x00 ‖ entry), node = SHA-256(0x01 ‖ left ‖
 * right), left subtree always the largest power of two smaller than the size.
 */
export const HASH_SIZE = 32;
export const EMPTY_ROOT: Buffer = hash('sha256', Buffer.alloc(0), 'buffer');

const LEAF_PREFIX = 0x00;
const NODE_PREFIX = 0x01;
const oneRange = new Uint32Array(2);
const nodeScratch = Buffer.alloc(2 * HASH_SIZE);
const nodeRange = new Uint32Array([0, 2 * HASH_SIZE]);

export function leafHash(canonicalBytes: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(HASH_SIZE);
  oneRange[1] = canonicalBytes.length;
  hashRanges(canonicalBytes, oneRange, 1, LEAF_PREFIX, out);
  return out;
}

export function nodeHash(left: Uint8Array, right: Uint8Array): Buffer {
  nodeScratch.set(left, 0);
  nodeScratch.set(right, HASH_SIZE);
  const out = Buffer.allocUnsafe(HASH_SIZE);
  hashRanges(nodeScratch, nodeRange, 1, NODE_PREFIX, out);
  return out;
}

/** Leaf hashes of `count` entries lying at `ranges` (start, end pairs) of `buffer`, back to back. */
export function leafHashes(buffer: Uint8Array, ranges: Uint32Array, count: number): Buffer {
  const out = Buffer.allocUnsafe(count * HASH_SIZE);
  hashRanges(buffer, ranges, count, LEAF_PREFIX, out);
  return out;
}

/** `leafHashes` on the hashing thread where the addon has one, so the caller's thread can go on meanwhile. */
export function leafHashesAsync(buffer: Uint8Array, ranges: Uint32Array, count: number): Promise<Buffer> {
  if (!hashRangesAsync) return Promise.resolve(leafHashes(buffer, ranges, count));
  const out = Buffer.allocUnsafe(count * HASH_SIZE);
  const hashing = hashRangesAsync;
  return new Promise((resolve) => hashing(buffer, ranges, count, LEAF_PREFIX, out, () => resolve(out)));
}

/** The parents of `count` sibling pairs laid out as left ‖ right, 64 bytes each, in one batch. */
function parentHashes(pairs: Buffer, count: number): Buffer {
  const ranges = new Uint32Array(2 * count);
  for (let i = 0; i < count; i++) {
    ranges[2 * i] = i * 2 * HASH_SIZE;
    ranges[2 * i + 1] = (i + 1) * 2 * HASH_SIZE;
  }
  const out = Buffer.allocUnsafe(count * HASH_SIZE);
  hashRanges(pairs, ranges, count, NODE_PREFIX, out);
  return out;
}

/** The largest power of two strictly smaller than n (n ≥ 2). */
function splitPoint(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

const isOdd = (x: number): boolean => x % 2 === 1;
const half = (x: number): number => Math.floor(x / 2);

function isPowerOfTwo(x: number): boolean {
  while (x > 1 && x % 2 === 0) x /= 2;
  return x === 1;
}

/** How a tree stores its hashes: in memory only, or spilling every filled chunk to a file per stored level. */
export interface TreeStorage {
  /** A directory for the spill files (`level-N.hashes`); they are derived data, rewritten whenever the tree is rebuilt. */
  spillDir?: string;
  /** Hashes per chunk (default 65,536, i.e. 2 MiB). */
  chunkHashes?: number;
  /** Spilled chunks kept in memory per stored level, most recently used first (default 8). */
  cachedChunks?: number;
}

/**
 * Append-only growable array of 32-byte hashes in chunks, so growth never copies what is stored. With a spill file,
 * every chunk that fills is written to it and only the chunk being filled plus a few recently read ones stay in
 * memory: a log of 100 M entries would otherwise hold ~3.4 GB of hashes.
 */
class HashArray {
  private readonly chunkBytes: number;
  /** The chunks held in memory: all of them without a spill file, else only the one being filled. */
  private readonly chunks: (Buffer | undefined)[] = [];
  /** Spilled chunks read back, least recently used first. */
  private readonly cache = new Map<number, Buffer>();
  private fd: number | undefined;
  private spillFailed = false;
  length = 0;

  constructor(
    private readonly chunkHashes: number,
    private readonly spillPath: string | undefined,
    private readonly cachedChunks: number,
  ) {
    this.chunkBytes = chunkHashes * HASH_SIZE;
  }

  /** Appends `count` hashes stored back to back in `values`, copying whole runs at a time. */
  pushAll(values: Uint8Array, count: number): void {
    for (let done = 0; done < count;) {
      const chunkIndex = Math.floor(this.length / this.chunkHashes);
      const chunk = (this.chunks[chunkIndex] ??= Buffer.allocUnsafe(this.chunkBytes));
      const slot = this.length % this.chunkHashes;
      const run = Math.min(count - done, this.chunkHashes - slot);
      chunk.set(values.subarray(done * HASH_SIZE, (done + run) * HASH_SIZE), slot * HASH_SIZE);
      this.length += run;
      done += run;
      if (this.spillPath !== undefined && slot + run === this.chunkHashes) this.spill(chunkIndex, chunk);
    }
  }

  get(index: number): Buffer {
    const chunkIndex = Math.floor(index / this.chunkHashes);
    const chunk = this.chunks[chunkIndex] ?? this.cached(chunkIndex);
    const offset = (index % this.chunkHashes) * HASH_SIZE;
    return chunk.subarray(offset, offset + HASH_SIZE);
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  // Synchronous: one 2 MiB write per 65,536 hashes of a level (2.4 ms median to the page cache on the dev machine; the file is
  // derived, so it is never synced), and proofs, which read it, are answered synchronously too. A spill that fails
  // (a full disk) must not fail the append that filled the chunk, whose entries are already durable: the chunk, and
  // every later one, then stays in memory as if there were no spill file.
  private spill(chunkIndex: number, chunk: Buffer): void {
    if (this.spillFailed) return;
    try {
      this.fd ??= openSync(this.spillPath as string, 'w+');
      for (let written = 0; written < chunk.length;) {
        written += writeSync(this.fd, chunk, written, chunk.length - written, chunkIndex * this.chunkBytes + written);
      }
    } catch (err) {
      this.spillFailed = true;
      componentLogger('ledger').warn({ err, file: this.spillPath }, 'could not write the tree spill file; keeping this tree level in memory');
      return;
    }
    this.chunks[chunkIndex] = undefined;
    this.remember(chunkIndex, chunk);
  }

  private cached(chunkIndex: number): Buffer {
    let chunk = this.cache.get(chunkIndex);
    if (chunk === undefined) {
      chunk = Buffer.allocUnsafe(this.chunkBytes);
      for (let read = 0; read < chunk.length;) {
        const n = readSync(this.fd as number, chunk, read, chunk.length - read, chunkIndex * this.chunkBytes + read);
        if (n === 0) throw new LedgerError('IO_ERROR', `${this.spillPath} ends inside chunk ${chunkIndex}`);
        read += n;
      }
    } else this.cache.delete(chunkIndex);
    this.remember(chunkIndex, chunk);
    return chunk;
  }

  private remember(chunkIndex: number, chunk: Buffer): void {
    this.cache.set(chunkIndex, chunk);
    if (this.cache.size > this.cachedChunks) this.cache.delete(this.cache.keys().next().value as number);
  }
}

/**
 * A Merkle tree that answers roots and proofs for any size up to its own without rereading entries. It keeps the
 * hashes of every complete subtree on levels 0, 4, 8, … (about 34 bytes per leaf, in memory or spilled to files, see
 * `TreeStorage`) and rebuilds a node on the levels in between from at most 8 stored descendants; the right edge is a
 * compact range (one pending node per level).
 */
export class MerkleTree {
  private static readonly KEEP_EVERY = 4;
  private readonly levels: HashArray[] = [];
  private readonly frontier: (Buffer | undefined)[] = [];
  private count = 0;

  constructor(private readonly storage: TreeStorage = {}) {}

  /** Closes the spill files; the tree must not be used afterwards. */
  close(): void {
    for (const level of this.levels) level.close();
  }

  get size(): number {
    return this.count;
  }

  /** Adds a leaf hash; the tree keeps `leaf` itself, so the caller must not reuse its memory. */
  append(leaf: Buffer): void {
    let node = leaf;
    let index = this.count;
    let level = 0;
    this.keep(0, node);
    while (isOdd(index)) {
      node = nodeHash(this.frontier[level] as Buffer, node);
      this.frontier[level] = undefined;
      level++;
      index = half(index);
      this.keep(level, node);
    }
    this.frontier[level] = node;
    this.count++;
  }

  /**
   * Adds `count` leaf hashes (32 bytes each, back to back) as `append` would one by one, hashing each level's new
   * parents in one batch. The tree keeps views of `leaves`, so the caller must not reuse its memory.
   */
  appendLeaves(leaves: Buffer, count: number): void {
    let nodes = leaves;
    let start = this.count; // index, within its level, of the first node in `nodes`
    let n = count;
    for (let level = 0; n > 0; level++) {
      this.keep(level, nodes, n);
      // A node with an even index waits for its right sibling; one with an odd index completes a parent.
      const pending = this.frontier[level];
      const first = start % 2 === 1 ? 1 : 0; // nodes[0] pairs with the pending left sibling
      const pairs = Math.floor((n - first) / 2) + first;
      const buffer = Buffer.allocUnsafe(pairs * 2 * HASH_SIZE);
      let p = 0;
      if (first === 1) {
        buffer.set(pending as Buffer, 0);
        buffer.set(nodes.subarray(0, HASH_SIZE), HASH_SIZE);
        p = 1;
      }
      const paired = first + 2 * (pairs - first); // nodes consumed by complete pairs
      nodes.copy(buffer, p * 2 * HASH_SIZE, first * HASH_SIZE, paired * HASH_SIZE);
      this.frontier[level] = paired < n ? nodes.subarray(paired * HASH_SIZE, (paired + 1) * HASH_SIZE) : undefined;
      nodes = pairs > 0 ? parentHashes(buffer, pairs) : Buffer.alloc(0);
      start = Math.floor(start / 2);
      n = pairs;
    }
    this.count += count;
  }

  /** Root hash of the first `size` leaves (RFC 6962 MTH(D[0:size])). */
  root(size: number = this.count): Buffer {
    this.checkSize(size);
    if (size === 0) return EMPTY_ROOT;
    if (size === this.count) {
      let root: Buffer | undefined;
      for (const pending of this.frontier) {
        if (pending !== undefined) root = root === undefined ? pending : nodeHash(pending, root);
      }
      return root as Buffer;
    }
    return this.rangeHash(0, size);
  }

  leaf(index: number): Buffer {
    if (!Number.isSafeInteger(index) || index < 0 || index >= this.count) throw new LedgerError('INVALID_ARGUMENT', `leaf ${index} outside tree of size ${this.count}`);
    return this.node(0, index);
  }

  /** RFC 6962 §2.1.1 PATH(m, D[n]). */
  inclusionProof(index: number, size: number = this.count): Buffer[] {
    this.checkSize(size);
    if (!Number.isSafeInteger(index) || index < 0 || index >= size) throw new LedgerError('INVALID_ARGUMENT', `leaf index ${index} outside tree of size ${size}`);
    const path: Buffer[] = [];
    const walk = (m: number, start: number, n: number): void => {
      if (n === 1) return;
      const k = splitPoint(n);
      if (m < k) {
        walk(m, start, k);
        path.push(this.rangeHash(start + k, n - k));
      } else {
        walk(m - k, start + k, n - k);
        path.push(this.rangeHash(start, k));
      }
    };
    walk(index, 0, size);
    return path;
  }

  /** RFC 6962 §2.1.2 PROOF(m, D[n]) via SUBPROOF. */
  consistencyProof(from: number, to: number = this.count): Buffer[] {
    this.checkSize(to);
    if (!Number.isSafeInteger(from) || from < 0 || from > to) throw new LedgerError('INVALID_ARGUMENT', `consistency from ${from} to ${to} is not a valid range`);
    if (from === 0 || from === to) return [];
    const proof: Buffer[] = [];
    const subproof = (m: number, start: number, n: number, complete: boolean): void => {
      if (m === n) {
        if (!complete) proof.push(this.rangeHash(start, n));
        return;
      }
      const k = splitPoint(n);
      if (m <= k) {
        subproof(m, start, k, complete);
        proof.push(this.rangeHash(start + k, n - k));
      } else {
        subproof(m - k, start + k, n - k, false);
        proof.push(this.rangeHash(start, k));
      }
    };
    subproof(from, 0, to, true);
    return proof;
  }

  private checkSize(size: number): void {
    if (!Number.isSafeInteger(size) || size < 0 || size > this.count) throw new LedgerError('INVALID_ARGUMENT', `tree size ${size} outside 0..${this.count}`);
  }

  private keep(level: number, nodes: Buffer, count = 1): void {
    if (level % MerkleTree.KEEP_EVERY !== 0) return;
    const stored = level / MerkleTree.KEEP_EVERY;
    while (this.levels.length <= stored) {
      const { spillDir, chunkHashes = 65_536, cachedChunks = 8 } = this.storage;
      this.levels.push(new HashArray(chunkHashes, spillDir === undefined ? undefined : join(spillDir, `level-${this.levels.length * MerkleTree.KEEP_EVERY}.hashes`), cachedChunks));
    }
    (this.levels[stored] as HashArray).pushAll(nodes, count);
  }


  /** Hash of the complete subtree of height `level` whose leftmost leaf is index·2^level. */
  private node(level: number, index: number): Buffer {
    if (level % MerkleTree.KEEP_EVERY === 0) return (this.levels[level / MerkleTree.KEEP_EVERY] as HashArray).get(index);
    return nodeHash(this.node(level - 1, 2 * index), this.node(level - 1, 2 * index + 1));
  }

  /** MTH(D[start:start+n]) where start is a multiple of the largest power of two ≤ n, as in every RFC recursion. */
  private rangeHash(start: number, n: number): Buffer {
    let level = 0;
    while (2 ** (level + 1) <= n) level++;
    if (2 ** level === n && start % n === 0) return this.node(level, start / n);
    const k = splitPoint(n);
    return nodeHash(this.rangeHash(start, k), this.rangeHash(start + k, n - k));
  }
}

type HashInput = Uint8Array | string;
const toHash = (value: HashInput): Buffer => (typeof value === 'string' ? Buffer.from(value, 'base64') : Buffer.from(value.buffer, value.byteOffset, value.byteLength));

/** Root implied by an inclusion proof (C2SP merkle-tree "Verification"), or undefined when the proof is malformed. */
export function rootFromInclusionProof(leafIndex: number, treeSize: number, leaf: HashInput, proof: readonly HashInput[]): Buffer | undefined {
  if (!Number.isSafeInteger(leafIndex) || !Number.isSafeInteger(treeSize) || leafIndex < 0 || leafIndex >= treeSize) return undefined;
  let h = toHash(leaf);
  if (h.length !== HASH_SIZE) return undefined;
  let fn = leafIndex;
  let sn = treeSize - 1;
  for (const element of proof) {
    const p = toHash(element);
    if (p.length !== HASH_SIZE || sn === 0) return undefined;
    if (isOdd(fn) || fn === sn) {
      h = nodeHash(p, h);
      while (!isOdd(fn) && fn !== 0) {
        fn = half(fn);
        sn = half(sn);
      }
    } else {
      h = nodeHash(h, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 ? h : undefined;
}

/** True when `proof` shows the leaf hash at `leafIndex` in the tree of `treeSize` with `root`. */
export function verifyInclusion(leafIndex: number, treeSize: number, leaf: HashInput, proof: readonly HashInput[], root: HashInput): boolean {
  const computed = rootFromInclusionProof(leafIndex, treeSize, leaf, proof);
  return computed !== undefined && computed.equals(toHash(root));
}

/** True when `proof` shows the tree (from, fromRoot) is a prefix of (to, toRoot) (C2SP merkle-tree "Verification"). */
export function verifyConsistency(from: number, to: number, proof: readonly HashInput[], fromRoot: HashInput, toRoot: HashInput): boolean {
  if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to) || from < 0 || from > to) return false;
  const r1 = toHash(fromRoot);
  const r2 = toHash(toRoot);
  if (from === to) return proof.length === 0 && r1.equals(r2);
  if (from === 0) return proof.length === 0;
  if (proof.length === 0) return false;
  const hashes = proof.map(toHash);
  if (hashes.some((h) => h.length !== HASH_SIZE)) return false;
  if (isPowerOfTwo(from)) hashes.unshift(r1);
  let fn = from - 1;
  let sn = to - 1;
  while (isOdd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  let fr = hashes[0] as Buffer;
  let sr = fr;
  for (const p of hashes.slice(1)) {
    if (sn === 0) return false;
    if (isOdd(fn) || fn === sn) {
      fr = nodeHash(p, fr);
      sr = nodeHash(p, sr);
      while (!isOdd(fn) && fn !== 0) {
        fn = half(fn);
        sn = half(sn);
      }
    } else {
      sr = nodeHash(sr, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 && fr.equals(r1) && sr.equals(r2);
}

/**
 * The perfect subtrees that cover leaves [begin, end) (a "compact range", as in transparency-dev/merkle), enough to
 * compute the root of [0, end) when begin is 0, and to extend a range with the nodes of the range that follows it.
 * Verification uses it to hash segments on separate threads and join them in order with O(log n) work each.
 */
export class CompactRange {
  private readonly stack: { level: number; start: number; hash: Buffer }[] = [];
  private endIndex: number;

  constructor(readonly begin = 0) {
    this.endIndex = begin;
  }

  get end(): number {
    return this.endIndex;
  }

  appendLeaf(leaf: Buffer): void {
    this.appendNode(0, leaf);
  }

  /** Appends the perfect subtree of height `level` that starts at `end` (which must be a multiple of 2^level). */
  appendNode(level: number, hash: Buffer): void {
    let node = { level, start: this.endIndex, hash };
    this.endIndex += 2 ** level;
    for (let top = this.stack.at(-1); top !== undefined && top.level === node.level && top.start % 2 ** (node.level + 1) === 0; top = this.stack.at(-1)) {
      this.stack.pop();
      node = { level: node.level + 1, start: top.start, hash: nodeHash(top.hash, node.hash) };
    }
    this.stack.push(node);
  }

  /** Appends every node of `next`, which must begin where this range ends. */
  appendRange(next: readonly { level: number; hash: Buffer }[]): void {
    for (const node of next) this.appendNode(node.level, node.hash);
  }

  nodes(): { level: number; hash: Buffer }[] {
    return this.stack.map(({ level, hash }) => ({ level, hash }));
  }

  /** MTH(D[0:end]); only meaningful for a range that begins at 0. */
  root(): Buffer {
    let root: Buffer | undefined;
    for (let i = this.stack.length - 1; i >= 0; i--) {
      const node = (this.stack[i] as { hash: Buffer }).hash;
      root = root === undefined ? node : nodeHash(node, root);
    }
    return root ?? EMPTY_ROOT;
  }
}
