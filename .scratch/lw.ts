import { buildConfig, startDataProxy } from '../src/dataproxy/index.ts';
import { linesWritten } from '../src/dataproxy/relay.ts';
import { execFile } from 'node:child_process'; import { promisify } from 'node:util';
import { readFileSync } from 'node:fs';
const verbose = process.argv[2] === 'v';
const config = await buildConfig({ catalog: 'bench', tenant: 't', dataPlane: { id: 'd' }, audit: { verbose }, tokenization: { secret: 'x'.repeat(40) },
  users: [{ name: 'bench', password: 'bench', groups: ['analysts'] }], policies: [] }, 'cfg');
const proxy = await startDataProxy({ config, listen: '127.0.0.1:0', upstream: 'postgres://postgres@127.0.0.1:5432/pgb', logFile: '/tmp/lw.ndjson', project: 'test' });
await promisify(execFile)('pgbench', ['-n', '-S', '-M', 'simple', '-c', '1', '-t', '20', `postgresql://bench:bench@127.0.0.1:${proxy.port}/pgb?sslmode=disable`]);
console.log('linesWritten', linesWritten());
await proxy.stop();
console.log('lines', readFileSync('/tmp/lw.ndjson', 'utf8').split('\n').length);
