import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { EntryIndex } from '../../src/index/index.ts';
import type { LogEntry } from '../../src/model/index.ts';
import { compilePredicate, parseFilter } from '../../src/query/index.ts';

const entries = JSON.parse(readFileSync(new URL('../fixtures/query/entries.json', import.meta.url), 'utf8')) as LogEntry[];
const DATA_PROXY = ['dp-auth-failure', 'dp-metadata-verbose', 'dp-policy-failure', 'dp-query-nonverbose', 'dp-query-verbose', 'dp-user-info'];
const POLICY_ACTION = ['pa-allow-green', 'pa-deny-red', 'pa-external', 'pa-probe', 'pa-redis'];
const ALL = entries.map((e) => e.insertId);

/** [what the row checks, filter, insertIds it matches]. The first block is seed 002's example queries, unchanged. */
const GOLDEN: [string, string, string[]][] = [
  ['seed 002: all network policy logs of a cluster', `resource.type="k8s_node"
resource.labels.location="us-central1-c"
resource.labels.cluster_name="demo"
logName="projects/demo-project/logs/policy-action"`, POLICY_ACTION],
  ['seed 002: a timeframe', `timestamp>="2020-06-22T06:30:51.128Z"
timestamp<="2020-06-23T06:30:51.128Z"`, ['pa-external', 'pa-redis']],
  ['seed 002: denied connections', 'jsonPayload.disposition="deny"', ['pa-deny-red', 'pa-external']],
  ['seed 002: to a deployment named redis', `jsonPayload.dest.pod_name=~"redis"
jsonPayload.dest.pod_namespace="default"`, ['pa-redis']],
  ['seed 002: cluster-external connections', 'jsonPayload.dest.instance != ""', ['pa-external']],
  ['seed 002: matching a network policy', `jsonPayload.policies.name="allow-frontend-to-db"
jsonPayload.policies.namespace="default"`, ['pa-redis']],
  ['seed 003: by audit action', 'jsonPayload.header.event.action="policy.resolution"', ['dp-metadata-verbose', 'dp-policy-failure', 'dp-query-nonverbose', 'dp-query-verbose']],
  ['seed 003: failures', 'jsonPayload.header.status.outcome="FAILURE"', ['dp-auth-failure', 'dp-policy-failure']],
  ['seed 003: attachment source (verbose event, fixed)', 'jsonPayload.attachments.source.namespace="dpp-proxy"', ['dp-query-verbose', 'dp-user-info']],
  ['seed 003: any transformation field', 'jsonPayload.attachments.requestData.transformations.field.field="lastname"', ['dp-metadata-verbose', 'dp-query-nonverbose', 'dp-query-verbose']],
  ['seed 001: by category', 'categories="userLogin"', ['dp-auth-failure', 'dp-user-info']],
  ['seed 001: deletions', 'categories:dataDelete', ['pl-1']],
  ['seed 000: failed egress through an agent', 'jsonPayload.response_flags="failed" jsonPayload.metadata.network_resources="agent-2"', ['eg-1']],
  // String =, != and : ignore case; : is a substring test.
  ['= ignores case', 'jsonPayload.disposition="DENY"', ['pa-deny-red', 'pa-external']],
  [': is a substring', 'jsonPayload.connection.src_ip:"10.84"', ['pa-allow-green', 'pa-deny-red', 'pa-external', 'pa-redis']],
  [': ignores case', 'jsonPayload.header.initiator.id:SUCCESSFUL', ['dp-query-verbose']],
  ['regex is case-sensitive', 'jsonPayload.dest.pod_name=~"REDIS"', []],
  ['(?i) makes regex case-insensitive', 'jsonPayload.dest.pod_name=~"(?i)REDIS"', ['pa-redis']],
  ['regex is unanchored; !~ on present fields only', 'jsonPayload.src.pod_name !~ "client"', ['pa-external', 'pa-redis']],
  ['presence', 'jsonPayload.policies.name:*', ['pa-allow-green', 'pa-probe', 'pa-redis']],
  ['presence of an object', 'jsonPayload.header:*', DATA_PROXY],
  ['a null member is not present', 'jsonPayload.header.initiator.sourceIp:*', []],
  // Missing fields.
  ['a comparison on a missing field is false', 'jsonPayload.dest.instance="203.0.113.9"', ['pa-external']],
  ['NOT over a missing field is true', 'NOT jsonPayload.dest.instance="203.0.113.9"', ALL.filter((id) => id !== 'pa-external')],
  ['!= on a missing field is false', 'jsonPayload.disposition != "deny"', ['pa-allow-green', 'pa-probe', 'pa-redis']],
  ['- is NOT', '-jsonPayload.disposition:*', ALL.filter((id) => !id.startsWith('pa-'))],
  // Arrays: any element.
  ['any element of an array', 'jsonPayload.policies.namespace="kube-system"', ['pa-redis']],
  ['empty policy name of probes', 'jsonPayload.policies.name=""', ['pa-probe']],
  // Numbers, ranks, time.
  ['numbers compare numerically', 'jsonPayload.count > 1', ['pa-deny-red']],
  ['numeric range', 'jsonPayload.connection.dest_port >= 6379 jsonPayload.connection.dest_port < 15021', ['pa-allow-green', 'pa-deny-red', 'pa-redis']],
  ['a quoted number still compares with a number', 'jsonPayload.connection.dest_port = "8080"', ['pa-allow-green', 'pa-deny-red']],
  ['fractions', 'jsonPayload.duration_ms < 12.5', ['eg-1']],
  ['severity by rank', 'severity >= WARNING', ['eg-1', 'pa-deny-red', 'pa-external']],
  ['severity rank below', 'severity < notice', ['pa-allow-green', 'pa-probe', 'pa-redis']],
  ['audit header.severity by rank', 'jsonPayload.header.severity >= WARNING', DATA_PROXY],
  ['audit header.severity above WARNING', 'jsonPayload.header.severity > WARNING', []],
  ['audit header.severity below CRITICAL', 'jsonPayload.header.severity < CRITICAL', DATA_PROXY],
  ['timestamp by time, with an offset', 'timestamp < "2020-06-16T05:10:37.994+02:00"', ['pa-allow-green', 'pa-deny-red']],
  ['timestamp with nanoseconds, by time', 'timestamp = "2020-06-16T03:10:37.993712Z"', ['pa-allow-green']],
  ['timestamp at second precision', 'timestamp >= "2022-11-05T09:00:00Z"', ['pl-1', 'dp-query-nonverbose']],
  // Booleans and null.
  ['NULL_VALUE', 'jsonPayload.header.status.reason = NULL_VALUE', ['dp-query-nonverbose', 'dp-query-verbose']],
  ['!= NULL_VALUE', 'jsonPayload.attachments.responseData != NULL_VALUE', []],
  // Precedence: OR binds tighter than AND; NOT tightest.
  ['a AND b OR c is a AND (b OR c)', 'jsonPayload.disposition="deny" OR jsonPayload.count=3 AND severity=warning', ['pa-deny-red', 'pa-external']],
  ['implicit AND across newlines', 'severity=INFO\njsonPayload.count=1', ['pa-allow-green', 'pa-probe', 'pa-redis']],
  ['parenthesized values', 'resource.type = ("k8s_node" OR "custos_egress_proxy") -jsonPayload.disposition=deny', ['eg-1', 'pa-allow-green', 'pa-probe', 'pa-redis']],
  ['NOT inside parenthesized values is NOT of the comparison', 'jsonPayload.disposition = (NOT allow)',
    ALL.filter((id) => !['pa-allow-green', 'pa-probe', 'pa-redis'].includes(id))],
  ['comments', 'jsonPayload.disposition="deny" -- only the denials\n-- and nothing else', ['pa-deny-red', 'pa-external']],
  // Quoted path segments.
  ['quoted path segment', 'labels."k8s.io/app" = EGRESS', ['eg-1']],
  ['a key with a dot is not a path', 'jsonPayload.attachments.requestData.context.requestAttributes."request.project":5a078d49', ['dp-user-info']],
  // Global restrictions and functions.
  ['bare value: has-search over every string field', 'redis', ['pa-redis']],
  ['bare quoted value', '"library.authors"', ['dp-query-verbose']],
  ['bare values do not match field names', 'JSONPAYLOAD', []],
  ['bare values do not match numbers', '52648', []],
  ['SEARCH tokens, any field', 'SEARCH("select library")', ['dp-query-verbose']],
  ['SEARCH is whole tokens', 'SEARCH("selec")', []],
  ['SEARCH in one field', 'SEARCH(jsonPayload.attachments, "dpp proxy")', ['dp-query-nonverbose', 'dp-query-verbose', 'dp-user-info']],
  ['ip_in_net v4', 'ip_in_net(jsonPayload.connection.dest_ip, "10.84.0.0/16")', ['pa-allow-green', 'pa-deny-red', 'pa-redis']],
  ['ip_in_net v6 never matches v4', 'ip_in_net(jsonPayload.connection.dest_ip, "2001:db8::/32")', []],
  ['log_id', 'log_id("data-proxy-audit")', DATA_PROXY],
  ['sample(…, 1) keeps all', 'sample(insertId, 1)', ALL],
  ['sample(…, 0) keeps none', 'sample(insertId, 0)', []],
];

describe('golden: seed example queries against seed example records', () => {
  let index: EntryIndex;
  before(async () => {
    index = await EntryIndex.open(':memory:');
    await index.insert('default', entries.map((entry, i) => ({ index: i, entry })));
  });
  after(() => index.close());

  for (const [name, filter, expected] of GOLDEN) {
    it(`${name}: ${filter.replace(/\n/g, ' ⏎ ')}`, async () => {
      const want = [...expected].sort();
      const predicate = compilePredicate(parseFilter(filter));
      assert.deepEqual(entries.filter(predicate).map((e) => e.insertId).sort(), want, 'in-memory predicate');
      const page = await index.list({ organization: 'default', filter, pageSize: 1000 });
      assert.deepEqual(page.entries.map((e) => e.insertId).sort(), want, 'DuckDB index');
    });
  }
});
