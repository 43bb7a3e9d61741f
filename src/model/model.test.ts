import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  BodyError, categoriesForAction, completeEntry, LOG_IDS, logName, normalizeTimestamp, parseWriteBody, validateEntry,
} from './index.ts';

const seedsDir = join(import.meta.dirname, '../../test/fixtures/seeds');
const logIdForFixture = (file: string) =>
  file.startsWith('policy-action') ? LOG_IDS.policyAction
  : file.startsWith('data-proxy') ? LOG_IDS.dataProxyAudit
  : file.startsWith('egress') ? LOG_IDS.networkEgress
  : LOG_IDS.audit;

const ndjson = (...values: unknown[]) => Buffer.from(values.map((v) => (typeof v === 'string' ? v : JSON.stringify(v))).join('\n') + '\n');
const good = { logName: 'projects/p/logs/app', jsonPayload: { message: 'hello' } };

describe('seed example records', () => {
  for (const file of readdirSync(seedsDir).filter((f) => f.endsWith('.json'))) {
    it(`${file} validates as a ${logIdForFixture(file)} payload`, () => {
      const payload = JSON.parse(readFileSync(join(seedsDir, file), 'utf8')) as Record<string, unknown>;
      const { entry, errors } = validateEntry({ logName: logName('demo', logIdForFixture(file)), jsonPayload: payload }, 1);
      assert.deepEqual(errors, []);
      assert.ok(entry);
    });
  }

  it('a policy-action record missing its disposition is refused with the field path', () => {
    const payload = JSON.parse(readFileSync(join(seedsDir, 'policy-action-deny.json'), 'utf8')) as Record<string, unknown>;
    delete payload['disposition'];
    const { errors } = validateEntry({ logName: logName('demo', LOG_IDS.policyAction), jsonPayload: payload }, 7);
    assert.equal(errors[0]?.line, 7);
    assert.equal(errors[0]?.field, 'jsonPayload.disposition');
  });
});

describe('audit categories (seed 001)', () => {
  const rows: [string, string[]][] = [
    ['user.authentication', ['authenticationCheck']],
    ['user.login', ['userLogin', 'authenticationCheck']],
    ['user.logout', ['userLogout']],
    ['dataset.create', ['dataCreate']],
    ['dataset.delete', ['dataDelete']],
    ['blob.export', ['dataExport']],
    ['blob.upload', ['dataImport']],
    ['token.create', ['tokenGeneration', 'managementTokens']],
    ['policy.resolution', []],
  ];
  for (const [action, expected] of rows) {
    it(`${action} → ${expected.join(', ') || 'none'}`, () => assert.deepEqual(categoriesForAction(action), expected));
  }

  it('keeps the categories a client sends and adds the derived ones after them', () => {
    const entry = completeEntry({ logName: 'projects/p/logs/data-proxy-audit', categories: ['dataExport'], jsonPayload: { header: { event: { action: 'blob.upload' } } } }, 'acme');
    assert.deepEqual(entry.categories, ['dataExport', 'dataImport']);
  });

  it('counts a user.authentication as a login only when its sender says so, or says nothing', () => {
    const auth = (categories?: string[]) => completeEntry({ logName: 'projects/p/logs/data-proxy-audit', ...(categories ? { categories } : {}), jsonPayload: { header: { event: { action: 'user.authentication' } } } }, 'acme').categories;
    assert.deepEqual(auth(), ['authenticationCheck', 'userLogin']); // a bare seed 003 event: a connection-time login
    assert.deepEqual(auth(['authenticationCheck', 'userLogin']), ['authenticationCheck', 'userLogin']);
    assert.deepEqual(auth(['authenticationCheck']), ['authenticationCheck']); // a per-query check
  });
});

describe('completing an entry', () => {
  it('assigns insertId, receiveTimestamp, severity, resource and the organization', () => {
    const entry = completeEntry({ logName: 'projects/p/logs/app', textPayload: 'x' }, 'acme', '2026-01-01T00:00:00.000Z');
    assert.match(entry.insertId, /^[0-9a-f-]{36}$/);
    assert.equal(entry.organization, 'acme');
    assert.equal(entry.timestamp, '2026-01-01T00:00:00.000Z');
    assert.equal(entry.severity, 'DEFAULT');
    assert.deepEqual(entry.resource, { type: 'global', labels: {} });
  });

  it('normalizes timestamps with offsets to UTC and keeps nanoseconds', () => {
    assert.equal(normalizeTimestamp('2020-06-16T05:10:37.993712906+02:00'), '2020-06-16T03:10:37.993712906Z');
    assert.equal(normalizeTimestamp('2021-04-01T12:42:32.1898720941Z'), '2021-04-01T12:42:32.189872094Z');
    assert.equal(normalizeTimestamp('2020-02-30T00:00:00Z'), undefined);
    assert.equal(normalizeTimestamp('yesterday'), undefined);
  });

  it('gives the same result whether or not the same second was just parsed', () => {
    const second = '2026-03-01T10:20:30';
    assert.equal(normalizeTimestamp(`${second}.250Z`), `${second}.25Z`);
    // each of these shares the remembered second's first 19 characters
    assert.equal(normalizeTimestamp(`${second}+01:00`), '2026-03-01T09:20:30Z');
    assert.equal(normalizeTimestamp(`${second}.1234567890z`), `${second}.123456789Z`);
    assert.equal(normalizeTimestamp(`${second}.Z`), undefined);
    assert.equal(normalizeTimestamp(`${second}Zjunk`), undefined);
    assert.equal(normalizeTimestamp('2026-03-01T10:20:60Z'), '2026-03-01T10:20:59Z');
    assert.equal(normalizeTimestamp(`${second}Z`), `${second}Z`);
  });
});

describe('parsing a write body (all or nothing, errors name line and field)', () => {
  it('accepts NDJSON and the {entries:[…]} form', () => {
    assert.equal(parseWriteBody(ndjson(good, good)).length, 2);
    assert.equal(parseWriteBody(Buffer.from(JSON.stringify({ entries: [good, good, good] }))).length, 3);
  });

  const bad: [string, Buffer, { status: number; line: number; field?: string; reason: RegExp }][] = [
    ['malformed JSON on line 2', ndjson(good, '{"logName": '), { status: 400, line: 2, reason: /malformed JSON/ }],
    ['wrong type', ndjson(good, good, { ...good, labels: { a: 1 } }), { status: 400, line: 3, field: 'labels.a', reason: /string/ }],
    ['missing logName', ndjson({ jsonPayload: {} }), { status: 400, line: 1, field: 'logName', reason: /./ }],
    ['no payload', ndjson({ logName: 'projects/p/logs/x' }), { status: 400, line: 1, field: 'jsonPayload', reason: /exactly one/ }],
    ['bad timestamp', ndjson({ ...good, timestamp: '2020-13-01T00:00:00Z' }), { status: 400, line: 1, field: 'timestamp', reason: /RFC 3339/ }],
    ['unknown severity', ndjson({ ...good, severity: 'LOUD' }), { status: 400, line: 1, field: 'severity', reason: /./ }],
    ['unknown top-level field', ndjson({ ...good, colour: 'red' }), { status: 400, line: 1, reason: /colour/ }],
    ['organization set by the client', ndjson({ ...good, organization: 'other' }), { status: 400, line: 1, field: 'organization', reason: /token/ }],
    ['entry over the size limit', ndjson(good, { ...good, textPayload: undefined, jsonPayload: { blob: 'x'.repeat(300 * 1024) } }), { status: 413, line: 2, reason: /262144-byte limit/ }],
    ['deep nesting', ndjson({ ...good, jsonPayload: JSON.parse('{"a":'.repeat(100) + '1' + '}'.repeat(100)) }), { status: 400, line: 1, reason: /nesting deeper/ }],
    ['invalid UTF-8', Buffer.concat([ndjson(good), Buffer.from([0x7b, 0xff, 0xfe, 0x7d, 0x0a])]), { status: 400, line: 2, reason: /invalid UTF-8 at byte offset/ }],
    ['empty body', Buffer.from(''), { status: 400, line: 1, reason: /no entries/ }],
    ['entries not an array', Buffer.from('{"entries": 5}'), { status: 400, line: 1, field: 'entries', reason: /array/ }],
  ];
  for (const [name, body, expected] of bad) {
    it(`rejects ${name}`, () => {
      assert.throws(() => parseWriteBody(body), (err: unknown) => {
        assert.ok(err instanceof BodyError);
        assert.equal(err.status, expected.status);
        const first = err.errors[0]!;
        assert.equal(first.line, expected.line);
        if (expected.field !== undefined) assert.equal(first.field, expected.field);
        assert.match(first.reason, expected.reason);
        return true;
      });
    });
  }

  it('names every bad line, with byte offsets for NDJSON', () => {
    const body = ndjson(good, '{', good, '[]');
    assert.throws(() => parseWriteBody(body), (err: unknown) => {
      assert.ok(err instanceof BodyError);
      assert.deepEqual(err.errors.map((e) => e.line), [2, 4]);
      assert.equal(err.errors[0]!.offset, JSON.stringify(good).length + 1);
      return true;
    });
  });
});
