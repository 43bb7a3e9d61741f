import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { RotatingFileWriter } from '../../src/netpol/writer.ts';

test('policy_action.log rotates before the line that would pass the limit, keeping the newest files only', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'netpol-rotate-'));
  try {
    const path = join(dir, 'policy_action.log');
    const writer = new RotatingFileWriter(path, 1000, 3);
    const lines = Array.from({ length: 100 }, (_, i) => `{"n":${String(i).padStart(3, '0')},"pad":"${'x'.repeat(80)}"}`); // 100 bytes with \n
    for (const line of lines) writer.write(line);
    await writer.close();
    assert.ok(!existsSync(`${path}.4`), 'at most 3 old files');
    const files = [`${path}.3`, `${path}.2`, `${path}.1`, path];
    for (const f of files) assert.ok(statSync(f).size <= 1000, `${f} within the limit`);
    const kept = files.flatMap((f) => readFileSync(f, 'utf8').trim().split('\n'));
    // Every kept line is whole, and they are the newest ones in order.
    assert.deepEqual(kept, lines.slice(lines.length - kept.length));
    assert.equal(kept.length, 40);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an existing log is appended to, counting its size', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'netpol-append-'));
  try {
    const path = join(dir, 'policy_action.log');
    const first = new RotatingFileWriter(path, 250, 5);
    first.write('a'.repeat(199));
    await first.close();
    const second = new RotatingFileWriter(path, 250, 5);
    second.write('b'.repeat(99));
    await second.close();
    assert.equal(readFileSync(`${path}.1`, 'utf8'), 'a'.repeat(199) + '\n');
    assert.equal(readFileSync(path, 'utf8'), 'b'.repeat(99) + '\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('multi-byte and over-buffer lines are written whole', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'netpol-utf8-'));
  try {
    const path = join(dir, 'policy_action.log');
    const writer = new RotatingFileWriter(path, 10 * 1024 * 1024, 5);
    const lines = ['{"pod_name":"café-ü-日本"}', `{"big":"${'y'.repeat(400 * 1024)}"}`, '{"n":3}'];
    for (const line of lines) writer.write(line);
    await writer.close();
    assert.deepEqual(readFileSync(path, 'utf8').split('\n'), [...lines, '']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
