import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { hash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { createRequire } from 'node:module';
import { createServer as createTcpServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { fillAndArchive } from '../../test/fixtures/ledger/entries.ts';
import { ADMIN, entry } from '../../test/helpers/store.ts';
import { loadServeConfig, startServer } from '../server/index.ts';
import { Ledger, verifyArchive } from './index.ts';
import { encodeS3Path, S3ArchiveTarget, S3RequestError, signS3Request, type S3ArchiveOptions } from './s3-archive.ts';

/**
 * s3rver runs in a child process because it makes continuation tokens with DES, which OpenSSL 3 offers only through
 * its legacy provider; the child also keeps s3rver's answers off the event loop of the clients under test.
 */
async function startS3rver(directory: string, bucket: string): Promise<{ child: ChildProcess; endpoint: string }> {
  const script = `const S3rver = require(process.argv[1]);
new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: process.argv[2], configureBuckets: [{ name: process.argv[3], configs: [] }] })
  .run().then(({ port }) => process.stdout.write(port + '\\n'));`;
  const child = spawn(process.execPath, ['--openssl-legacy-provider', '-e', script, createRequire(import.meta.url).resolve('s3rver'), directory, bucket], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [line] = (await once(createInterface({ input: child.stdout as Readable }), 'line')) as [string];
  return { child, endpoint: `http://127.0.0.1:${Number(line)}` };
}

const BUCKET = 'custos-test';
/** s3rver's built-in account. */
const CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };
const run = promisify(execFile);

const dirs: string[] = [];
const servers: Server[] = [];
let s3rver: ChildProcess;
let endpoint: string;

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'custos-s3-'));
  dirs.push(dir);
  return dir;
}

function target(options: Partial<S3ArchiveOptions> = {}): S3ArchiveTarget {
  return new S3ArchiveTarget({ bucket: BUCKET, region: 'us-east-1', endpoint, credentials: CREDENTIALS, ...options });
}

async function listening(server: Server): Promise<number> {
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

before(async () => {
  ({ child: s3rver, endpoint } = await startS3rver(await tempDir(), BUCKET));
});

after(async () => {
  for (const server of servers) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
  const exited = once(s3rver, 'exit');
  s3rver.kill();
  await exited;
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

describe('SigV4 signing', () => {
  // The examples of AWS's "Signature Calculations for the Authorization Header" (S3 API reference): s3rver does not check V4 signatures, these do.
  const example = { credentials: { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' }, region: 'us-east-1', host: 'examplebucket.s3.amazonaws.com', now: new Date('2013-05-24T00:00:00Z') };
  const emptySha256 = hash('sha256', '', 'hex');
  const signatureOf = (headers: Record<string, string>): string | undefined => /Signature=([0-9a-f]{64})$/.exec(headers['authorization'] ?? '')?.[1];

  it('reproduces the GET Object example (a signed Range header)', () => {
    const headers = signS3Request({ ...example, method: 'GET', path: '/test.txt', query: [], headers: { Range: 'bytes=0-9' }, payloadSha256: emptySha256 });
    assert.equal(headers['authorization'], 'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41');
    assert.equal(headers['x-amz-date'], '20130524T000000Z');
  });

  it('reproduces the PUT Object example (a key with $ encoded once)', () => {
    const body = Buffer.from('Welcome to Amazon S3.');
    const headers = signS3Request({
      ...example, method: 'PUT', path: `/${encodeS3Path('test$file.text')}`, query: [],
      headers: { Date: 'Fri, 24 May 2013 00:00:00 GMT', 'x-amz-storage-class': 'REDUCED_REDUNDANCY' }, payloadSha256: hash('sha256', body, 'hex'),
    });
    assert.equal(signatureOf(headers), '98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd');
  });

  it('reproduces the GET Bucket (List Objects) example (query parameters sorted)', () => {
    const headers = signS3Request({ ...example, method: 'GET', path: '/', query: [['prefix', 'J'], ['max-keys', '2']], payloadSha256: emptySha256 });
    assert.equal(signatureOf(headers), '34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7');
  });

  it('encodes each key segment, keeping /', () => {
    assert.equal(encodeS3Path('a b/c+d/é~_.-/(x)*!'), 'a%20b/c%2Bd/%C3%A9~_.-/%28x%29%2A%21');
  });
});

describe('S3ArchiveTarget against s3rver', () => {
  it('puts, gets and lists keys that need encoding, under a key prefix or not', async () => {
    const archive = target();
    const keys = ['enc/objects/a b.txt', 'enc/objects/c+d.txt', 'enc/objects/R&D\'s <notes>.txt', 'enc/objects/ünï €.txt', 'enc/objects/日本/x.txt'];
    for (const key of keys) await archive.put(key, Buffer.from(`body of ${key}`));
    for (const key of keys) assert.equal((await archive.get(key))?.toString(), `body of ${key}`);
    assert.deepEqual(await archive.list('enc/objects/'), keys.filter((key) => !key.includes('日本')).sort());
    assert.deepEqual(await archive.listPrefixes('enc/objects/'), ['enc/objects/日本/']);

    const prefixed = target({ prefix: 'tenants/t 1' });
    await prefixed.put('acme/segments/x.gz', Buffer.from('inside the prefix'));
    assert.deepEqual(await prefixed.list('acme/segments/'), ['acme/segments/x.gz']);
    assert.deepEqual(await prefixed.listPrefixes(''), ['acme/']);
    assert.equal((await archive.get('tenants/t 1/acme/segments/x.gz'))?.toString(), 'inside the prefix');
    assert.ok((await archive.listPrefixes('')).includes('tenants/'));
    assert.equal(prefixed.describe(), `s3://${BUCKET}/tenants/t 1 at ${endpoint}`);
  });

  it('follows continuation tokens across pages of keys and of prefixes', async () => {
    const archive = target({ listPageSize: 3 });
    const keys = Array.from({ length: 10 }, (_, i) => `paged/keys/k${String(i).padStart(2, '0')}`);
    for (const key of keys) await archive.put(key, Buffer.from(key));
    for (let i = 0; i < 7; i++) await archive.put(`paged/orgs/o${i}/manifests/m.json`, Buffer.from('{}'));
    assert.deepEqual(await archive.list('paged/keys/'), keys);
    assert.deepEqual(await archive.listPrefixes('paged/orgs/'), Array.from({ length: 7 }, (_, i) => `paged/orgs/o${i}/`));
  });

  it('gives undefined for a missing key, an error for a missing bucket, and refuses . and .. in keys', async () => {
    assert.equal(await target().get('missing/key.json'), undefined);
    assert.deepEqual(await target().list('missing/'), []);
    await assert.rejects(target({ bucket: 'no-such-bucket' }).get('a/b'), (err: S3RequestError) => err.code === 'NoSuchBucket' && err.status === 404 && /GetObject of a\/b/.test(err.message));
    for (const key of ['../x', 'a/./b', 'a//b', '/a', '']) await assert.rejects(target().put(key, Buffer.from('x')), { code: 'INVALID_ARGUMENT' });
  });

  it('reports a refused access key with the S3 code, status, operation and key, and never the secret', async () => {
    const secretAccessKey = 'wrong-secret-Zq81xK';
    const archive = target({ credentials: { accessKeyId: 'NOT-AN-ACCOUNT', secretAccessKey } });
    const err = await archive.put('acme/segments/s.gz', Buffer.from('x')).then(() => undefined, (e: unknown) => e as S3RequestError);
    assert.ok(err instanceof S3RequestError);
    assert.equal(err.code, 'InvalidAccessKeyId');
    assert.equal(err.status, 403);
    assert.match(err.message, /^S3 PutObject of acme\/segments\/s\.gz in s3:\/\/custos-test at http:\/\/127\.0\.0\.1:\d+ failed: HTTP 403 InvalidAccessKeyId: /);
    const everything = JSON.stringify({ ...err, message: err.message, stack: err.stack });
    assert.doesNotMatch(everything, new RegExp(`${secretAccessKey}|AWS4-HMAC-SHA256|Signature=`));
  });

  it('tries again on 503 SlowDown, not on 4xx', async () => {
    let answered = 0;
    let slowDowns = 2;
    const s3Port = Number(new URL(endpoint).port);
    // In front of s3rver: the first answers are S3's throttling reply, the rest are s3rver's own.
    const port = await listening(createServer((req, res) => {
      answered++;
      if (slowDowns-- > 0) {
        req.resume();
        res.writeHead(503, { 'content-type': 'application/xml' }).end('<?xml version="1.0"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>');
        return;
      }
      req.pipe(httpRequest({ host: '127.0.0.1', port: s3Port, method: req.method, path: req.url, headers: req.headers }, (upstream) => {
        res.writeHead(upstream.statusCode ?? 502, upstream.headers);
        upstream.pipe(res);
      }));
    }));
    const archive = target({ endpoint: `http://127.0.0.1:${port}` });
    await archive.put('retry/object', Buffer.from('after two SlowDowns'));
    assert.equal(answered, 3);
    assert.equal((await target().get('retry/object'))?.toString(), 'after two SlowDowns');

    answered = 0;
    slowDowns = 5;
    await assert.rejects(archive.get('retry/object'), /failed: HTTP 503 SlowDown: Please reduce your request rate\. \(after 3 attempts\)/);
    assert.equal(answered, 3);

    answered = 0;
    slowDowns = 0;
    await assert.rejects(target({ endpoint: `http://127.0.0.1:${port}`, credentials: { accessKeyId: 'NOT-AN-ACCOUNT', secretAccessKey: 'x' } }).get('retry/object'), { code: 'InvalidAccessKeyId' });
    assert.equal(answered, 1);
  });

  it('fails clearly and within its bounds on a refused connection and on a server that never answers', async () => {
    const closed = createTcpServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const closedPort = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    let started = Date.now();
    await assert.rejects(target({ endpoint: `http://127.0.0.1:${closedPort}`, maxAttempts: 2 }).get('a/b'), /^S3RequestError: S3 GetObject of a\/b in .* failed after 2 attempt\(s\): ECONNREFUSED$/);
    assert.ok(Date.now() - started < 5_000);

    const silent = createServer(() => {});
    const silentPort = await listening(silent);
    started = Date.now();
    await assert.rejects(
      target({ endpoint: `http://127.0.0.1:${silentPort}`, requestTimeoutMs: 300, maxAttempts: 2 }).list('acme/manifests/'),
      /^S3RequestError: S3 ListObjectsV2 in .* failed after 2 attempt\(s\): no complete answer within 300 ms$/,
    );
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 600 && elapsed < 5_000, `took ${elapsed} ms`);
  });

  it('refuses an object larger than the read cap', async () => {
    await target().put('capped/object', Buffer.alloc(4096, 1));
    await assert.rejects(target({ maxObjectBytes: 1024 }).get('capped/object'), /GetObject of capped\/object .*: the answer is 4096 bytes, more than the 1024 bytes read at most/);
  });
});

describe('the ledger archiving to s3rver', () => {
  const prefix = 'e2e';
  let segmentKeys: string[] = [];

  before(async () => {
    await fillAndArchive(await Ledger.open({ dir: await tempDir(), segmentMaxBytes: 8 * 1024, archive: { target: target({ prefix }) } }));
    segmentKeys = await target({ prefix }).list('acme/segments/');
  });

  const env: NodeJS.ProcessEnv = { ...process.env, CUSTOS_LOG_LEVEL: 'warn', AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId, AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey };
  const custos = (args: string[], environment: NodeJS.ProcessEnv = env) =>
    run(process.execPath, ['bin/custos.js', ...args], { env: environment, encoding: 'utf8' }).then(
      ({ stdout, stderr }) => ({ status: 0, stdout, stderr }),
      (err: { code: number; stdout: string; stderr: string }) => ({ status: err.code, stdout: err.stdout, stderr: err.stderr }),
    );

  it('archives every sealed segment, and verifyArchive and custos verify --archive s3://… accept the archive', async () => {
    assert.ok(segmentKeys.length >= 3, `segments: ${segmentKeys.join(', ')}`);
    const report = await verifyArchive(target({ prefix }));
    assert.equal(report.ok, true, JSON.stringify(report.failure));
    assert.deepEqual(report.organizations.map((o) => [o.org, o.treeSize, o.segments]), [['acme', 120, segmentKeys.length], ['beta', 5, 1]]);
    assert.equal(report.dir, `s3://${BUCKET}/${prefix} at ${endpoint}`);

    const cli = await custos(['verify', '--archive', `s3://${BUCKET}/${prefix}`, '--s3-endpoint', endpoint, '--s3-region', 'us-east-1']);
    assert.equal(cli.status, 0, cli.stderr);
    assert.match(cli.stderr, /intact: 125 entries in 2 organization/);
  });

  it('names the organization and segment once a segment object is overwritten with altered bytes', async () => {
    const key = segmentKeys[1] as string;
    const segment = key.slice('acme/segments/'.length).replace(/\.gz$/, '');
    const original = (await target({ prefix }).get(key)) as Buffer;
    const altered = Buffer.from(original);
    altered[altered.length - 12] = (altered[altered.length - 12] as number) ^ 0x40;
    await target({ prefix }).put(key, altered);
    try {
      const report = await verifyArchive(target({ prefix }));
      assert.equal(report.ok, false);
      assert.deepEqual([report.failure?.code, report.failure?.org, report.failure?.segment], ['HASH_MISMATCH', 'acme', segment]);

      const cli = await custos(['verify', '--archive', `s3://${BUCKET}/${prefix}/`, '--s3-endpoint', endpoint]);
      assert.equal(cli.status, 2, cli.stderr);
      assert.match(cli.stderr, new RegExp(`HASH_MISMATCH org=acme segment=${segment.replace('.', '\\.')} entry=\\d+`));
    } finally {
      await target({ prefix }).put(key, original);
    }
  });

  it('custos verify needs the credentials in the environment and s3 flags only with an s3:// archive', async () => {
    const { AWS_ACCESS_KEY_ID: _id, AWS_SECRET_ACCESS_KEY: _secret, AWS_SESSION_TOKEN: _token, ...withoutCredentials } = env;
    const missing = await custos(['verify', '--archive', `s3://${BUCKET}/${prefix}`, '--s3-endpoint', endpoint], withoutCredentials);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment/);
    const stray = await custos(['verify', '--archive', 'some/dir', '--s3-endpoint', endpoint]);
    assert.equal(stray.status, 1);
    assert.match(stray.stderr, /--s3-endpoint only apply to --archive s3:\/\/BUCKET/);
  });
});

describe('serve config for the S3 archive', () => {
  async function configFile(yaml: string): Promise<string> {
    const file = join(await tempDir(), 'custos.yaml');
    await writeFile(file, yaml);
    return file;
  }

  it('takes exactly one of dir or s3, never credentials, and keeps dir configs as they were', async () => {
    const s3 = await loadServeConfig(await configFile(`archive: { s3: { bucket: ${BUCKET}, region: us-east-1, endpoint: '${endpoint}', prefix: p }, maxDelay: 1h }\n`));
    assert.deepEqual(s3.archive, { s3: { bucket: BUCKET, region: 'us-east-1', endpoint, prefix: 'p', addressing: 'path' }, maxDelay: '1h' });
    assert.deepEqual((await loadServeConfig(await configFile('archive: { dir: /srv/archive }\n'))).archive, { dir: '/srv/archive', maxDelay: '24h' });
    await assert.rejects(loadServeConfig(await configFile(`archive: { dir: /srv/archive, s3: { bucket: b, region: r } }\n`)), /archive: give exactly one of dir or s3/);
    await assert.rejects(loadServeConfig(await configFile('archive: { maxDelay: 1h }\n')), /archive: give exactly one of dir or s3/);
    await assert.rejects(loadServeConfig(await configFile('archive: { s3: { bucket: b, region: r, secretAccessKey: s } }\n')), /archive\.s3: .*secretAccessKey/);
  });

  it('refuses to start without credentials in the environment, and archives to s3rver within maxDelay with them', async () => {
    const archive = { s3: { bucket: BUCKET, region: 'us-east-1', endpoint, prefix: 'served', addressing: 'path' as const }, maxDelay: '1s' };
    const base = { ...(await loadServeConfig()), listen: '127.0.0.1:0', archive };
    const admin = { CUSTOS_ADMIN_TOKEN: ADMIN };
    await assert.rejects(startServer({ ...base, data: await tempDir() }, admin), /AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment/);

    const server = await startServer({ ...base, data: await tempDir() }, { ...admin, AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId, AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey });
    try {
      const written = await fetch(`${server.url}/v1/entries:write`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/x-ndjson' },
        body: Array.from({ length: 20 }, (_, i) => JSON.stringify(entry(i))).join('\n') + '\n',
      });
      assert.equal(written.status, 200, await written.text());
      let report = await verifyArchive(target({ prefix: 'served' }));
      for (let tries = 0; tries < 100 && report.entries < 20; tries++) {
        await sleep(200);
        report = await verifyArchive(target({ prefix: 'served' }));
      }
      assert.equal(report.ok, true, JSON.stringify(report.failure));
      assert.equal(report.entries, 20, 'the entries did not reach the S3 archive within 20 s');
    } finally {
      await server.close();
    }
  });
});
