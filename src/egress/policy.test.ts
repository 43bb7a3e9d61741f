import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseEgressConfig } from './config.ts';
import { candidatePolicies, decide, ipLiteral, refusedRangeOf, sniAllowed } from './policy.ts';

// The precedence written in docs/egress.md ("Decision"), one row per sentence.
const config = parseEgressConfig({
  policies: [
    {
      id: 'web',
      type: 'direct',
      allow: [
        { host: 'api.partner.test', ports: [443] },
        { host: '*.cdn.test', ports: ['8000-8010'] },
        { cidr: '10.20.0.0/16', ports: [5432] },
      ],
    },
    { id: 'lab', type: 'direct', allow: [{ host: 'api.partner.test', ports: [443] }, { cidr: '127.0.0.0/8', ports: [443] }] },
    { id: 'meta', type: 'direct', allow: [{ cidr: '169.254.169.254/32', ports: [80] }, { cidr: '2001:db8::/32', ports: [80] }] },
  ],
  sources: [
    { id: 'a', credentials: { username: 'a', password: 'a' }, policies: ['web', 'lab'] },
    { id: 'b', credentials: { username: 'b', password: 'b' }, policies: ['lab', 'web'] },
    { id: 'm', credentials: { username: 'm', password: 'm' }, policies: ['meta'] },
  ],
});
const policiesOf = (id: string) => config.sources.find((s) => s.id === id)!.policies.map((p) => config.policies.find((x) => x.id === p)!);

const rows: { rule: string; source: string; host: string; port: number; addresses: string[]; expect: string }[] = [
  { rule: 'a host rule allows a public address', source: 'a', host: 'api.partner.test', port: 443, addresses: ['93.184.216.34'], expect: 'allow web' },
  { rule: 'names compare case-insensitively, trailing dot ignored', source: 'a', host: 'API.Partner.Test.', port: 443, addresses: ['93.184.216.34'], expect: 'allow web' },
  { rule: 'the port must match', source: 'a', host: 'api.partner.test', port: 80, addresses: ['93.184.216.34'], expect: 'deny no_matching_policy' },
  { rule: 'port ranges are inclusive', source: 'a', host: 'x.cdn.test', port: 8010, addresses: ['93.184.216.34'], expect: 'allow web' },
  { rule: 'a wildcard matches deeper subdomains', source: 'a', host: 'a.b.cdn.test', port: 8000, addresses: ['93.184.216.34'], expect: 'allow web' },
  { rule: 'a wildcard does not match its apex', source: 'a', host: 'cdn.test', port: 8000, addresses: ['93.184.216.34'], expect: 'deny no_matching_policy' },
  { rule: 'a wildcard does not match a lookalike suffix', source: 'a', host: 'evilcdn.test', port: 8000, addresses: ['93.184.216.34'], expect: 'deny no_matching_policy' },
  { rule: 'a host rule never admits loopback', source: 'a', host: 'api.partner.test', port: 443, addresses: ['127.0.0.1'], expect: 'allow lab' },
  { rule: 'the first imported policy that allows wins (order a: web, lab)', source: 'a', host: 'api.partner.test', port: 443, addresses: ['1.1.1.1'], expect: 'allow web' },
  { rule: 'the first imported policy that allows wins (order b: lab, web)', source: 'b', host: 'api.partner.test', port: 443, addresses: ['1.1.1.1'], expect: 'allow lab' },
  { rule: 'every address must pass within one policy', source: 'a', host: 'api.partner.test', port: 443, addresses: ['1.1.1.1', '10.0.0.1'], expect: 'deny destination_address_refused' },
  { rule: 'a CIDR rule admits a private address it names', source: 'a', host: 'db.internal', port: 5432, addresses: ['10.20.1.2'], expect: 'allow web' },
  { rule: 'a CIDR rule admits the IP literal it names', source: 'a', host: '10.20.1.2', port: 5432, addresses: ['10.20.1.2'], expect: 'allow web' },
  { rule: 'an IP literal outside every CIDR is denied before DNS', source: 'a', host: '10.21.0.1', port: 5432, addresses: ['10.21.0.1'], expect: 'deny no_matching_policy' },
  { rule: 'host rules never match IP literals', source: 'a', host: '93.184.216.34', port: 443, addresses: ['93.184.216.34'], expect: 'deny no_matching_policy' },
  { rule: 'IPv4-mapped IPv6 is judged as IPv4', source: 'a', host: '::ffff:10.20.1.2', port: 5432, addresses: ['::ffff:10.20.1.2'], expect: 'allow web' },
  { rule: 'link-local metadata is refused for a name', source: 'a', host: 'api.partner.test', port: 443, addresses: ['169.254.169.254'], expect: 'deny destination_address_refused' },
  { rule: 'metadata is allowed when a CIDR names it', source: 'm', host: '169.254.169.254', port: 80, addresses: ['169.254.169.254'], expect: 'allow meta' },
  { rule: 'a CIDR that names an IPv6 range admits it', source: 'm', host: '2001:db8::5', port: 80, addresses: ['2001:db8::5'], expect: 'allow meta' },
];

for (const row of rows) {
  test(`decision: ${row.rule}`, () => {
    const candidates = candidatePolicies(policiesOf(row.source), row.host, row.port);
    const decision = decide(candidates, row.host, row.port, row.addresses);
    assert.equal(decision.allowed ? `allow ${decision.policy.id}` : `deny ${decision.reason}`, row.expect, decision.allowed ? '' : decision.detail);
  });
}

test('decision: a denied name has no candidate policy, so it is never resolved', () => {
  assert.deepEqual(candidatePolicies(policiesOf('a'), 'exfil.example.com', 444), []);
  // A CIDR rule on the port makes any name a candidate: it may resolve into the range.
  assert.deepEqual(candidatePolicies(policiesOf('a'), 'exfil.example.com', 443).map((p) => p.id), ['lab']);
});

test('decision: an allowed name is dialled at exactly the checked addresses', () => {
  const decision = decide(candidatePolicies(policiesOf('a'), 'db.internal', 5432), 'db.internal', 5432, ['::ffff:10.20.0.9']);
  assert.equal(decision.allowed && decision.addresses.join(), '10.20.0.9');
});

const ranges: [address: string, range: string | undefined][] = [
  ['8.8.8.8', undefined],
  ['2606:4700::1111', undefined],
  ['127.0.0.1', 'loopback'],
  ['::1', 'loopback'],
  ['10.1.2.3', 'private'],
  ['172.16.0.1', 'private'],
  ['192.168.1.1', 'private'],
  ['fd00::1', 'uniqueLocal'],
  ['169.254.169.254', 'linkLocal'],
  ['fe80::1', 'linkLocal'],
  ['100.64.0.1', 'carrierGradeNat'],
  ['0.0.0.0', 'unspecified'],
  ['::', 'unspecified'],
  ['224.0.0.1', 'multicast'],
  ['255.255.255.255', 'broadcast'],
  ['64:ff9b::a9fe:a9fe', 'rfc6052'],
  ['2002:a9fe:a9fe::1', '6to4'],
  ['2001:0:4136:e378:8000:63bf:3fff:fdd2', 'teredo'],
  ['::ffff:169.254.169.254', 'linkLocal'],
  ['::ffff:127.0.0.1', 'loopback'],
  ['::a9fe:a9fe', 'ipv4Compatible'],
  ['::ffff:0:a9fe:a9fe', 'rfc6145'],
  ['192.0.2.1', 'reserved'],
  ['2001:db8::1', 'reserved'],
];
for (const [address, range] of ranges) {
  test(`refused range: ${address} → ${range ?? 'public'}`, () => {
    assert.equal(refusedRangeOf(ipLiteral(address)!), range);
  });
}

test('ipLiteral: shorthand IPv4 forms are names, not addresses', () => {
  assert.equal(ipLiteral('127.1'), undefined);
  assert.equal(ipLiteral('0x7f.0.0.1'), undefined);
  assert.equal(ipLiteral('[::1]')?.toString(), '::1');
});

test('sniAllowed: the server name must be the requested name', () => {
  const web = config.policies[0]!;
  assert.equal(sniAllowed(web, 'api.partner.test', 443, 'API.partner.test'), true);
  assert.equal(sniAllowed(web, 'api.partner.test', 443, 'fronted.example.com'), false);
  assert.equal(sniAllowed(web, '93.184.216.34', 443, 'api.partner.test'), true);
  assert.equal(sniAllowed(web, '93.184.216.34', 443, 'fronted.example.com'), false);
});
