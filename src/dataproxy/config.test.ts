import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig } from './config.ts';

const fixture = (name: string): string => new URL(`../../test/fixtures/dataproxy/${name}`, import.meta.url).pathname;

test('the issue-shaped configuration loads; the plain password becomes a verifier', async () => {
  const config = await loadConfig(fixture('embedded.yaml'));
  assert.equal(config.catalog, 'acmedb');
  assert.equal(config.policies![0]!.rules.length, 3);
  const user = config.users[0]!;
  assert.equal(user.name, 'proxy-user');
  assert.equal(user.verifier.storedKey.length, 32);
  assert.ok(!JSON.stringify(config).includes('s3cret'), 'the password is not kept');
});

for (const [file, message] of [
  ['bad-transformation.yaml', /policies\[0\]\.rules\[0\]\.transformation/],
  ['bad-filter-expression.yaml', /policies\[0\]\.filters\[0\]\.expression: .*not a single SQL expression/],
  ['user-without-password.yaml', /users\[0\]: give exactly one of password or scramVerifier/],
  ['bad-token-pattern.yaml', /policies\[0\]\.rules\[0\]\.transformation: token pattern "\(a\|b\)"/],
  ['both-policy-sources.yaml', /policySource: give policies or policySource, not both/],
] as const) {
  test(`${file} is refused with an error naming the path`, async () => {
    await assert.rejects(loadConfig(fixture(file)), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'CONFIG');
      assert.match(err.message, message);
      assert.ok(err.message.startsWith(fixture(file)), err.message);
      return true;
    });
  });
}
