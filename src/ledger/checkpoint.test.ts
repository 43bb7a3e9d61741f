import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import { formatCheckpoint, openCheckpoint, parseCheckpointText, signCheckpoint } from './checkpoint.ts';
import { LedgerError } from './errors.ts';
import { EMPTY_ROOT } from './merkle.ts';
import { noteKeyId, noteSigner, openNote, parseVerifierKey, verifierKeyString } from './note.ts';

const pem = (): string => generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
const signer = noteSigner('custos', pem());
const checkpoint = { origin: 'custos/acme', treeSize: 20852163, rootHash: Buffer.from('CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=', 'base64') };
const code = (expected: string) => (err: unknown) => err instanceof LedgerError && err.code === expected;

describe('signed note checkpoints (C2SP tlog-checkpoint, signed-note)', () => {
  it('formats origin, size and base64 root, one per line', () => {
    assert.equal(formatCheckpoint(checkpoint), 'custos/acme\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n');
  });

  it('signs with an em dash line holding key ID ‖ Ed25519 signature, and opens again', () => {
    const note = signCheckpoint(checkpoint, signer);
    const lines = note.split('\n');
    assert.equal(lines[3], '');
    assert.match(lines[4] as string, /^\u2014 custos [A-Za-z0-9+/]+=*$/u);
    const signature = Buffer.from((lines[4] as string).split(' ')[2] as string, 'base64');
    assert.equal(signature.length, 4 + 64);
    assert.deepEqual(signature.subarray(0, 4), signer.keyId);
    assert.deepEqual(openCheckpoint(note, signer, 'custos/acme'), checkpoint);
  });

  it('derives the key ID as SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]', () => {
    const expected = createHash('sha256').update('custos\n').update(Buffer.of(1)).update(signer.publicKey).digest().subarray(0, 4);
    assert.deepEqual(noteKeyId('custos', signer.publicKey), expected);
  });

  it('round-trips the verifier key string name+hexid+base64(0x01 ‖ key)', () => {
    const text = verifierKeyString(signer);
    assert.match(text, /^custos\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}$/);
    const verifier = parseVerifierKey(text);
    assert.deepEqual(verifier.publicKey, signer.publicKey);
    assert.throws(() => parseVerifierKey(text.replace(/\+[0-9a-f]{8}\+/, '+00000000+')), code('BAD_CHECKPOINT'));
  });

  const forgeries: [string, (note: string) => string, string][] = [
    ['a changed root', (note) => note.replace(checkpoint.rootHash.toString('base64'), EMPTY_ROOT.toString('base64')), 'BAD_SIGNATURE'],
    ['a changed tree size', (note) => note.replace('20852163', '20852162'), 'BAD_SIGNATURE'],
    ['a signature by another key under the same name', () => signCheckpoint(checkpoint, noteSigner('custos', pem())), 'BAD_SIGNATURE'],
    ['no signature by the known key', (note) => note.replace(/\u2014 custos /u, '\u2014 someone-else '), 'BAD_SIGNATURE'],
    ['no blank line before signatures', (note) => note.replace('\n\n', '\n'), 'BAD_CHECKPOINT'],
  ];
  for (const [name, forge, expected] of forgeries) {
    it(`refuses a note with ${name}`, () => assert.throws(() => openCheckpoint(forge(signCheckpoint(checkpoint, signer)), signer), code(expected)));
  }

  it('ignores signatures by unknown keys next to a good one', () => {
    const other = noteSigner('witness.example', pem());
    const note = signCheckpoint(checkpoint, signer);
    const cosigned = `${note}${signCheckpoint(checkpoint, other).split('\n').at(-2)}\n`;
    assert.equal(openNote(cosigned, signer), formatCheckpoint(checkpoint));
  });

  it('refuses a checkpoint for another origin', () => {
    assert.throws(() => openCheckpoint(signCheckpoint(checkpoint, signer), signer, 'custos/other'), code('BAD_CHECKPOINT'));
  });

  it('refuses sizes with leading zeroes and roots that are not 32 bytes', () => {
    assert.throws(() => parseCheckpointText('o\n01\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n'), code('BAD_CHECKPOINT'));
    assert.throws(() => parseCheckpointText('o\n1\nAAAA\n'), code('BAD_CHECKPOINT'));
  });
});
