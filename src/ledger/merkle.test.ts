import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { crc32 } from 'node:zlib';
import {
  crc32Ranges, crc32RangesPortable, digestImplementation, hashRanges, hashRangesAsync, hashRangesPortable, stampRecords, stampRecordsPortable,
} from './digest.ts';
import { CompactRange, leafHash, leafHashes, leafHashesAsync, MerkleTree, nodeHash, verifyConsistency, verifyInclusion } from './merkle.ts';

interface Vectors {
  leaves: string[];
  roots: string[];
  inclusion: { leafIndex: number; treeSize: number; proof: string[] }[];
  consistency: { from: number; to: number; proof: string[] }[];
}
const vectors = JSON.parse(readFileSync(new URL('../../test/fixtures/ledger/rfc6962-vectors.json', import.meta.url), 'utf8')) as Vectors;
const hex = (h: Buffer): string => h.toString('hex');
const fromHex = (s: string): Buffer => Buffer.from(s, 'hex');
const leaves = vectors.leaves.map((d) => leafHash(fromHex(d)));

function treeOf(size: number): MerkleTree {
  const tree = new MerkleTree();
  for (const leaf of leaves.slice(0, size)) tree.append(leaf);
  return tree;
}

/** MTH straight from RFC 6962 §2.1, as the reference the tree is compared with. */
function referenceRoot(hashes: Buffer[]): Buffer {
  if (hashes.length === 0) return createHash('sha256').digest();
  if (hashes.length === 1) return hashes[0] as Buffer;
  let k = 1;
  while (k * 2 < hashes.length) k *= 2;
  // node:crypto directly, not nodeHash, so the reference does not share the code it checks
  return createHash('sha256').update(Buffer.of(1)).update(referenceRoot(hashes.slice(0, k))).update(referenceRoot(hashes.slice(k))).digest();
}

describe('batched hashing', () => {
  it('the native batch digest and node:crypto give the same bytes, and both refuse a range outside the buffer', () => {
    const buffer = Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 7919) % 256));
    const spans = [[0, 0], [0, 1], [3, 700], [1000, 1064], [4000, 5000], [17, 17]] as const;
    const ranges = new Uint32Array(spans.flat());
    for (const prefix of [0, 1, 255]) {
      const expected = Buffer.concat(spans.map(([a, b]) => createHash('sha256').update(Buffer.of(prefix)).update(buffer.subarray(a, b)).digest()));
      for (const implementation of [hashRanges, hashRangesPortable]) {
        const out = Buffer.alloc(32 * spans.length);
        implementation(buffer, ranges, spans.length, prefix, out);
        assert.equal(out.toString('hex'), expected.toString('hex'), `${digestImplementation} prefix ${prefix}`);
      }
    }
    for (const implementation of [hashRanges, hashRangesPortable]) {
      assert.throws(() => implementation(buffer, new Uint32Array([10, 5001]), 1, 0, Buffer.alloc(32)), /outside the buffer/);
    }
  });

  it('large batches give the same digests as node:crypto', () => {
    const buffer = Buffer.from(Array.from({ length: 1 << 16 }, (_, i) => (i * 40503) % 251));
    const count = 3000;
    const ranges = new Uint32Array(2 * count);
    for (let i = 0; i < count; i++) {
      ranges[2 * i] = (i * 97) % 60000;
      ranges[2 * i + 1] = ranges[2 * i]! + (i % 700);
    }
    const expected = Buffer.alloc(32 * count);
    hashRangesPortable(buffer, ranges, count, 0, expected);
    const out = Buffer.alloc(32 * count);
    hashRanges(buffer, ranges, count, 0, out);
    assert.ok(out.equals(expected));
  });

  it('hashing on the addon\'s thread gives the same digests, finishes jobs in order, and checks its arguments', async (t) => {
    if (!hashRangesAsync) return t.skip('the native addon is not built');
    const hashing = hashRangesAsync;
    const jobs = Array.from({ length: 20 }, (_, j) => {
      const buffer = Buffer.from(Array.from({ length: 40_000 }, (_, i) => (i * 7919 + j) % 256));
      const count = 50;
      const ranges = new Uint32Array(2 * count);
      for (let i = 0; i < count; i++) [ranges[2 * i], ranges[2 * i + 1]] = [i * 700, i * 700 + (i * 13 + j) % 700];
      const expected = Buffer.alloc(32 * count);
      hashRangesPortable(buffer, ranges, count, 0, expected);
      return { buffer, ranges, count, expected, out: Buffer.alloc(32 * count) };
    });
    const finished: number[] = [];
    await Promise.all(jobs.map((job, j) => new Promise<void>((resolve) => hashing(job.buffer, job.ranges, job.count, 0, job.out, () => {
      finished.push(j);
      resolve();
    }))));
    assert.deepEqual(finished, jobs.map((_, j) => j));
    for (const job of jobs) assert.ok(job.out.equals(job.expected));
    assert.deepEqual(await leafHashesAsync(jobs[0]!.buffer, jobs[0]!.ranges, jobs[0]!.count), leafHashes(jobs[0]!.buffer, jobs[0]!.ranges, jobs[0]!.count));
    const noop = (): void => undefined;
    assert.throws(() => hashing(jobs[0]!.buffer, new Uint32Array([10, 40_001]), 1, 0, Buffer.alloc(32), noop), /outside the buffer/);
    assert.throws(() => hashing(jobs[0]!.buffer, jobs[0]!.ranges, 2, 0, Buffer.alloc(32), noop), /too small/);
    assert.throws(() => hashing(jobs[0]!.buffer, jobs[0]!.ranges, 1, 0, Buffer.alloc(32), undefined as unknown as () => void), /done must be a function/);
  });

  it('the native batch CRC-32 and zlib.crc32 give the same checksums', () => {
    const buffer = Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 31337) % 256));
    const spans = [[0, 0], [0, 1], [3, 700], [1000, 1064], [4000, 5000]] as const;
    const expected = spans.map(([a, b]) => crc32(buffer.subarray(a, b)));
    for (const implementation of [crc32Ranges, crc32RangesPortable]) {
      const out = new Uint32Array(spans.length);
      implementation(buffer, new Uint32Array(spans.flat()), spans.length, out);
      assert.deepEqual([...out], expected);
      assert.throws(() => implementation(buffer, new Uint32Array([0, 5001]), 1, new Uint32Array(1)), /outside the buffer/);
    }
  });

  it('native and portable record stamping write the same indexes and checksums', () => {
    const payloads = ['{"a":1}', '', '{"b":"' + 'x'.repeat(700) + '"}'].map((p) => Buffer.from(p));
    const layout = (): { buffer: Buffer; ranges: Uint32Array } => {
      const buffer = Buffer.concat(payloads.flatMap((p) => [Buffer.alloc(16), p]));
      const ranges = new Uint32Array(2 * payloads.length);
      let offset = 0;
      payloads.forEach((p, i) => {
        ranges[2 * i] = offset + 16;
        ranges[2 * i + 1] = offset + 16 + p.length;
        offset += 16 + p.length;
      });
      return { buffer, ranges };
    };
    const firstIndex = 2 ** 32 + 5; // the index's high word is used
    const stamped = [stampRecords, stampRecordsPortable].map((stamp) => {
      const { buffer, ranges } = layout();
      stamp(buffer, ranges, payloads.length, firstIndex);
      return buffer;
    });
    assert.equal(stamped[0]!.toString('hex'), stamped[1]!.toString('hex'));
    const record = stamped[0]!.subarray(16 + payloads[0]!.length, 32 + payloads[0]!.length);
    assert.equal(record.readUInt32BE(8) * 2 ** 32 + record.readUInt32BE(12), firstIndex + 1);
    assert.equal(record.readUInt32BE(4), crc32(record.subarray(8, 16)));
    for (const stamp of [stampRecords, stampRecordsPortable]) {
      assert.throws(() => stamp(Buffer.alloc(20), new Uint32Array([16, 21]), 1, 0), /outside the buffer/);
    }
  });

  it('appending leaves in batches builds the same tree as appending them one by one', () => {
    const many = Array.from({ length: 300 }, (_, i) => createHash('sha256').update(`leaf ${i}`).digest());
    let seed = 7;
    const random = (n: number): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    for (let round = 0; round < 20; round++) {
      const single = new MerkleTree();
      const batched = new MerkleTree();
      for (let at = 0; at < many.length;) {
        const size = Math.min(many.length - at, 1 + random(round < 10 ? 9 : 70));
        const chunk = many.slice(at, at + size);
        for (const leaf of chunk) single.append(leaf);
        batched.appendLeaves(Buffer.concat(chunk), size);
        at += size;
        assert.equal(batched.size, at);
        assert.equal(batched.root().toString('hex'), single.root().toString('hex'), `round ${round}, size ${at}`);
      }
      for (const size of [1, 2, 3, 64, 65, 255, 300]) {
        assert.equal(batched.root(size).toString('hex'), referenceRoot(many.slice(0, size)).toString('hex'));
        for (const index of [0, size - 1, size >> 1]) {
          assert.deepEqual(batched.inclusionProof(index, size).map(hex), single.inclusionProof(index, size).map(hex));
        }
      }
    }
  });
});

describe('a tree that spills its stored levels to files', () => {
  it('answers every root and proof as the in-memory tree does, reading spilled chunks back past its small cache', () => {
    const dir = mkdtempSync(join(tmpdir(), 'custos-tree-'));
    try {
      const many = Array.from({ length: 700 }, (_, i) => createHash('sha256').update(`spilled leaf ${i}`).digest());
      const spilled = new MerkleTree({ spillDir: dir, chunkHashes: 4, cachedChunks: 2 });
      const memory = new MerkleTree();
      let seed = 11;
      const random = (n: number): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
      for (let at = 0; at < many.length;) {
        const size = Math.min(many.length - at, 1 + random(40));
        const chunk = Buffer.concat(many.slice(at, at + size));
        spilled.appendLeaves(chunk, size);
        memory.appendLeaves(Buffer.from(chunk), size);
        at += size;
      }
      for (let k = 0; k < 5; k++) {
        spilled.append(many[k]!);
        memory.append(many[k]!);
      }
      // levels 0 and 4 filled chunks of 4 hashes, which went to files; level 8 (2 nodes) has not filled one yet
      assert.deepEqual(readdirSync(dir).sort(), ['level-0.hashes', 'level-4.hashes']);
      assert.equal(statSync(join(dir, 'level-0.hashes')).size, Math.floor(705 / 4) * 4 * 32);
      for (const size of [1, 2, 5, 64, 255, 256, 257, 511, 700, 705]) {
        assert.equal(hex(spilled.root(size)), hex(memory.root(size)), `root(${size})`);
        for (const index of new Set([0, size >> 1, size - 1])) {
          assert.deepEqual(spilled.inclusionProof(index, size).map(hex), memory.inclusionProof(index, size).map(hex), `inclusion ${index}/${size}`);
        }
        for (const from of new Set([1, size >> 2, size - 1])) {
          if (from >= 1) assert.deepEqual(spilled.consistencyProof(from, size).map(hex), memory.consistencyProof(from, size).map(hex));
        }
      }
      for (let i = 0; i < 705; i += 37) assert.equal(hex(spilled.leaf(i)), hex(memory.leaf(i)));
      spilled.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('keeps a level in memory when its spill file cannot be written, and still answers every proof', () => {
    const many = Array.from({ length: 100 }, (_, i) => createHash('sha256').update(`leaf ${i}`).digest());
    // a spill directory that does not exist: opening the file fails as a full or read-only disk would
    const unwritable = new MerkleTree({ spillDir: join(tmpdir(), `custos-no-such-dir-${process.pid}`, 'tree'), chunkHashes: 4, cachedChunks: 1 });
    const memory = new MerkleTree();
    unwritable.appendLeaves(Buffer.concat(many), many.length);
    memory.appendLeaves(Buffer.concat(many), many.length);
    assert.equal(unwritable.size, 100);
    for (const size of [1, 9, 64, 100]) {
      assert.equal(hex(unwritable.root(size)), hex(memory.root(size)));
      assert.deepEqual(unwritable.inclusionProof(0, size).map(hex), memory.inclusionProof(0, size).map(hex));
    }
    unwritable.close();
  });
});

describe('RFC 6962 test leaves', () => {
  it('roots of every size 1..8 match the known answers', () => {
    const tree = new MerkleTree();
    for (let size = 1; size <= 8; size++) {
      tree.append(leaves[size - 1] as Buffer);
      assert.equal(hex(tree.root()), vectors.roots[size - 1], `size ${size}`);
      for (let earlier = 1; earlier <= size; earlier++) assert.equal(hex(tree.root(earlier)), vectors.roots[earlier - 1]);
    }
  });

  it('the empty tree hashes to SHA-256 of nothing', () => {
    assert.equal(hex(new MerkleTree().root()), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });

  for (const v of vectors.inclusion) {
    it(`inclusion proof for leaf ${v.leafIndex} in size ${v.treeSize} is generated and verified`, () => {
      const tree = treeOf(8);
      assert.deepEqual(tree.inclusionProof(v.leafIndex, v.treeSize).map(hex), v.proof);
      assert.ok(verifyInclusion(v.leafIndex, v.treeSize, leaves[v.leafIndex] as Buffer, v.proof.map(fromHex), fromHex(vectors.roots[v.treeSize - 1] as string)));
    });
  }

  for (const v of vectors.consistency) {
    it(`consistency proof ${v.from} → ${v.to} is generated and verified`, () => {
      const tree = treeOf(8);
      assert.deepEqual(tree.consistencyProof(v.from, v.to).map(hex), v.proof);
      assert.ok(verifyConsistency(v.from, v.to, v.proof.map(fromHex), fromHex(vectors.roots[v.from - 1] as string), fromHex(vectors.roots[v.to - 1] as string)));
    });
  }
});

describe('C2SP merkle-tree 7-entry example', () => {
  const [a, b, c, d, e, f, g] = leaves as [Buffer, Buffer, Buffer, Buffer, Buffer, Buffer, Buffer];
  const h = nodeHash(a, b);
  const i = nodeHash(c, d);
  const j = nodeHash(e, f);
  const k = nodeHash(h, i);
  const l = nodeHash(j, g);
  const root = nodeHash(k, l);
  const tree = treeOf(7);

  it('root = H(0x01 ‖ k ‖ l) and equals the known answer for size 7', () => {
    assert.equal(hex(tree.root()), hex(root));
    assert.equal(hex(root), vectors.roots[6]);
  });

  const inclusion: [number, Buffer[]][] = [[0, [b, i, l]], [3, [c, h, l]], [4, [f, g, k]], [6, [j, k]]];
  for (const [index, expected] of inclusion) {
    it(`d[${index}] is proved by the listed nodes`, () => {
      assert.deepEqual(tree.inclusionProof(index, 7).map(hex), expected.map(hex));
      assert.ok(verifyInclusion(index, 7, leaves[index] as Buffer, expected, root));
    });
  }

  const consistency: [number, Buffer[]][] = [[3, [c, d, h, l]], [4, [l]], [6, [j, g, k]]];
  for (const [from, expected] of consistency) {
    it(`size ${from} → 7 is proved by the listed nodes`, () => {
      assert.deepEqual(tree.consistencyProof(from, 7).map(hex), expected.map(hex));
      assert.ok(verifyConsistency(from, 7, expected, tree.root(from), root));
    });
  }
});

describe('verification refuses what the transparency-dev probes mutate', () => {
  const tree = treeOf(8);
  const root = tree.root();
  const proof = tree.inclusionProof(5, 8);
  const flipped = proof.map((p, n) => (n === 1 ? Buffer.from(p.map((byte, at) => (at === 0 ? byte ^ 8 : byte))) : p));
  const probes: [string, () => boolean][] = [
    ['leaf index - 1', () => verifyInclusion(4, 8, leaves[5] as Buffer, proof, root)],
    ['leaf index + 1', () => verifyInclusion(6, 8, leaves[5] as Buffer, proof, root)],
    ['tree size * 2', () => verifyInclusion(5, 16, leaves[5] as Buffer, proof, root)],
    ['tree size / 2', () => verifyInclusion(5, 4, leaves[5] as Buffer, proof, root)],
    ['wrong leaf', () => verifyInclusion(5, 8, leaves[4] as Buffer, proof, root)],
    ['trailing root', () => verifyInclusion(5, 8, leaves[5] as Buffer, [...proof, root], root)],
    ['preceding root', () => verifyInclusion(5, 8, leaves[5] as Buffer, [root, ...proof], root)],
    ['removed component', () => verifyInclusion(5, 8, leaves[5] as Buffer, proof.slice(0, -1), root)],
    ['modified proof[1] bit 3', () => verifyInclusion(5, 8, leaves[5] as Buffer, flipped, root)],
    ['index beyond size', () => verifyInclusion(8, 8, leaves[5] as Buffer, proof, root)],
    ['consistency with swapped roots', () => verifyConsistency(6, 8, tree.consistencyProof(6, 8), root, tree.root(6))],
    ['consistency with empty proof', () => verifyConsistency(6, 8, [], tree.root(6), root)],
    ['consistency with truncated proof', () => verifyConsistency(6, 8, tree.consistencyProof(6, 8).slice(0, -1), tree.root(6), root)],
    ['consistency 1 → 1 with different roots', () => verifyConsistency(1, 1, [], tree.root(1), root)],
    ['consistency backwards in time', () => verifyConsistency(2, 1, [], tree.root(2), tree.root(1))],
  ];
  for (const [name, probe] of probes) it(`rejects ${name}`, () => assert.equal(probe(), false));
});

describe('a larger tree agrees with the RFC recursion', () => {
  it('every root, inclusion and consistency proof up to size 70 verifies against the reference MTH', () => {
    const hashes = Array.from({ length: 70 }, (_, n) => leafHash(Buffer.from(`entry ${n}`)));
    const tree = new MerkleTree();
    for (const leaf of hashes) tree.append(leaf);
    for (let size = 1; size <= 70; size++) {
      const root = referenceRoot(hashes.slice(0, size));
      assert.equal(hex(tree.root(size)), hex(root), `root ${size}`);
      for (let index = 0; index < size; index++) {
        assert.ok(verifyInclusion(index, size, hashes[index] as Buffer, tree.inclusionProof(index, size), root), `inclusion ${index}/${size}`);
      }
      for (let from = 0; from <= size; from++) {
        assert.ok(verifyConsistency(from, size, tree.consistencyProof(from, size), tree.root(from), root), `consistency ${from}→${size}`);
      }
    }
  });

  it('accepts base64 strings as proofs travel over HTTP', () => {
    const tree = treeOf(8);
    const proof = tree.inclusionProof(3, 8).map((h) => h.toString('base64'));
    assert.ok(verifyInclusion(3, 8, (leaves[3] as Buffer).toString('base64'), proof, tree.root().toString('base64')));
  });
});

describe('CompactRange', () => {
  it('joins ranges split at arbitrary points into the same roots as the tree', () => {
    const hashes = Array.from({ length: 100 }, (_, n) => leafHash(Buffer.from(`leaf ${n}`)));
    const tree = new MerkleTree();
    for (const leaf of hashes) tree.append(leaf);
    for (const cuts of [[0, 100], [0, 1, 100], [0, 7, 8, 33, 64, 99, 100], [0, 13, 50, 51, 100]]) {
      const joined = new CompactRange(0);
      for (let i = 0; i + 1 < cuts.length; i++) {
        const part = new CompactRange(cuts[i]);
        for (const leaf of hashes.slice(cuts[i], cuts[i + 1])) part.appendLeaf(leaf);
        joined.appendRange(part.nodes());
        assert.equal(hex(joined.root()), hex(tree.root(cuts[i + 1] as number)), `cuts ${cuts.join(',')} at ${cuts[i + 1]}`);
      }
    }
  });
});
