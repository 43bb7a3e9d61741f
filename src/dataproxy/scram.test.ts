import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createVerifier, formatVerifier, parseVerifier, ScramClientExchange, ScramServerExchange } from './scram.ts';

// RFC 7677 section 3: user "user", password "pencil".
const RFC = {
  clientNonce: 'rOprNGfwEbeRWgbNEkqO',
  serverNonce: '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0',
  salt: Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64'),
  clientFinal: 'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
};

test('RFC 7677 test vector: server side', () => {
  const server = new ScramServerExchange(createVerifier('pencil', 4096, RFC.salt), RFC.serverNonce);
  assert.equal(server.start(`n,,n=user,r=${RFC.clientNonce}`), `r=${RFC.clientNonce}${RFC.serverNonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096`);
  assert.equal(server.finish(RFC.clientFinal), RFC.serverFinal);
});

test('RFC 7677 test vector: client side', () => {
  const client = new ScramClientExchange('pencil', RFC.clientNonce);
  assert.equal(client.first('user'), `n,,n=user,r=${RFC.clientNonce}`);
  assert.equal(client.final(`r=${RFC.clientNonce}${RFC.serverNonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096`), RFC.clientFinal);
  assert.doesNotThrow(() => client.verify(RFC.serverFinal));
});

test('a wrong password fails at the proof, with the AUTH code', () => {
  const server = new ScramServerExchange(createVerifier('right'));
  const client = new ScramClientExchange('wrong');
  const serverFirst = server.start(client.first());
  assert.throws(() => server.finish(client.final(serverFirst)), { code: 'AUTH' });
});

test('verifiers round-trip through the PostgreSQL text format', () => {
  const v = createVerifier('s3cret');
  const text = formatVerifier(v);
  assert.match(text, /^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$/);
  assert.deepEqual(parseVerifier(text), v);
  assert.throws(() => parseVerifier('md5abc'), { code: 'CONFIG' });
});
