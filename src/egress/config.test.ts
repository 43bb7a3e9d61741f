import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { EgressConfigError, loadEgressConfig } from './config.ts';

const fixture = (name: string): string => join(import.meta.dirname, '../../test/fixtures/egress', name);

test('the issue\'s sample config loads', () => {
  const config = loadEgressConfig(fixture('sample.yaml'));
  assert.equal(config.listen, '127.0.0.1:3128');
  assert.equal(config.socks5, '127.0.0.1:1080');
  assert.deepEqual(config.resolver.hosts, { 'api.partner.test': ['127.0.0.1'] });
  assert.equal(config.resolver.system, false, 'a static map alone means no system resolver');
  assert.deepEqual(config.policies[0]!.allow[1]!.ports, [{ from: 9000, to: 9010 }]);
  assert.deepEqual(config.policies[1]!.agents.map((a) => [a.id, a.host, a.port]), [['agent-1', '127.0.0.1', 4101], ['agent-2', '127.0.0.1', 4102]]);
  assert.deepEqual(config.sources[0]!.policies, ['ri.egress.policy.partner-api', 'ri.egress.policy.onprem']);
});

// Each broken fixture is named for what is broken; the error names the path of the bad value.
const broken: [file: string, code: string, mentions: RegExp][] = [
  ['bad_cidr.yaml', 'INVALID', /policies\[0\]\.allow\[1\]\.cidr: must be a CIDR/],
  ['bad_port_range.yaml', 'INVALID', /policies\[0\]\.allow\[0\]\.ports\[0\]: port range must satisfy/],
  ['port_out_of_range.yaml', 'INVALID', /policies\[0\]\.allow\[0\]\.ports\[0\]/],
  ['unknown_policy_reference.yaml', 'INVALID', /sources\[0\]\.policies\[1\]: no policy has id "ri\.egress\.policy\.missing"/],
  ['agent_proxy_without_agents.yaml', 'INVALID', /policies\[0\]\.agents: an agent-proxy policy lists at least one agent/],
  ['rule_with_host_and_cidr.yaml', 'INVALID', /policies\[0\]\.allow\[0\]: a rule has exactly one of host or cidr/],
  ['host_rule_is_an_ip.yaml', 'INVALID', /policies\[0\]\.allow\[0\]\.host: is an IP address: write it as a cidr rule/],
  ['invalid_host.yaml', 'INVALID', /policies\[0\]\.allow\[0\]\.host: must be a host name/],
  ['duplicate_source_and_username.yaml', 'INVALID', /sources\[1\]\.id: duplicate source id "s"[\s\S]*sources\[1\]\.credentials\.username: also used by sources\[0\]/],
  ['source_without_identity.yaml', 'INVALID', /sources\[0\]: a source is identified by credentials/],
  ['unknown_policy_type.yaml', 'INVALID', /policies\[0\]\.type/],
  ['bad_listen_address.yaml', 'INVALID', /listen: must be HOST:PORT/],
  ['unknown_key.yaml', 'INVALID', /policies\[0\].*alow/],
  ['yaml_syntax_error.yaml', 'PARSE', /YAML error at line \d+, column \d+/],
  ['does_not_exist.yaml', 'READ', /cannot read config/],
];
for (const [file, code, mentions] of broken) {
  test(`config: ${file} is rejected with its path`, () => {
    assert.throws(
      () => loadEgressConfig(fixture(file)),
      (err: unknown) => err instanceof EgressConfigError && err.code === code && mentions.test(err.message) && err.message.includes(file),
    );
  });
}
