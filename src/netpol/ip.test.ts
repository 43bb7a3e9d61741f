import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cidrContains, ipv4ToInt, Ipv4Table, normalizeIp, parseCidr } from './ip.ts';

test('ipv4ToInt accepts dotted quads only', () => {
  const rows: [string, number][] = [
    ['0.0.0.0', 0],
    ['10.8.0.10', 168296458],
    ['255.255.255.255', 4294967295],
    ['1.2.3', -1],
    ['1.2.3.4.5', -1],
    ['01.2.3.4', -1],
    ['1.2.3.256', -1],
    ['1..2.3', -1],
    ['1.2.3.', -1],
    ['a.b.c.d', -1],
    ['fd00::1', -1],
  ];
  for (const [text, want] of rows) assert.equal(ipv4ToInt(text), want, text);
});

test('normalizeIp writes IPv6 in RFC 5952 form and rejects non-addresses', () => {
  assert.equal(normalizeIp('FD00:0:0:0:0:0:0:1'), 'fd00::1');
  assert.equal(normalizeIp('10.0.0.1'), '10.0.0.1');
  assert.equal(normalizeIp('10.0.0'), undefined);
  assert.equal(normalizeIp('example.com'), undefined);
});

test('CIDRs match their own family only', () => {
  const v4 = parseCidr('10.0.0.0/8')!;
  const v6 = parseCidr('fd00::/8')!;
  const all4 = parseCidr('0.0.0.0/0')!;
  assert.ok(cidrContains(v4, '10.1.2.3', ipv4ToInt('10.1.2.3')));
  assert.ok(!cidrContains(v4, '11.1.2.3', ipv4ToInt('11.1.2.3')));
  assert.ok(cidrContains(all4, '1.2.3.4', ipv4ToInt('1.2.3.4')));
  assert.ok(!cidrContains(all4, 'fd00::1', -1));
  assert.ok(cidrContains(v6, 'fd00::1', -1));
  assert.ok(!cidrContains(v6, '10.1.2.3', ipv4ToInt('10.1.2.3')));
  assert.equal(parseCidr('10.0.0.0/33'), undefined);
  assert.equal(parseCidr('10.0.0.0'), undefined);
});

test('Ipv4Table finds what was set, and nothing else, across collisions', () => {
  const table = new Ipv4Table<number>(5000);
  for (let i = 0; i < 5000; i++) table.set(ipv4ToInt(`10.${i >> 8}.${i & 255}.1`), i);
  for (let i = 0; i < 5000; i++) assert.equal(table.get(ipv4ToInt(`10.${i >> 8}.${i & 255}.1`)), i);
  assert.equal(table.get(ipv4ToInt('10.0.0.2')), undefined);
  table.set(ipv4ToInt('10.0.0.1'), -1);
  assert.equal(table.get(ipv4ToInt('10.0.0.1')), -1);
});
