import type { EntrySink } from '../ingest/sink.ts';
import { BatchingSink } from '../ingest/sink.ts';
import { componentLogger } from '../telemetry/index.ts';
import { recordToEntry } from './entry.ts';
import type { Connection } from './evaluate.ts';
import { buildCluster, parseManifestText } from './manifests.ts';
import { PolicyActionRecorder } from './recorder.ts';
import { DEFAULT_SETTINGS } from './settings.ts';

/**
 * A small shop cluster for `custos serve --demo`: its flows go through the same recorder as `custos netpol`, with the
 * current time, so a new user sees allowed, denied (aggregated), probe and cluster-external records at once.
 */
const DEMO_MANIFESTS = `
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations: {policy.network.gke.io/enable-deny-logging: "true"}
---
apiVersion: v1
kind: Node
metadata: {name: gke-demo-default-pool-5dad52ed-k0h1}
spec: {podCIDR: 10.84.0.0/24}
status: {addresses: [{type: InternalIP, address: 10.128.0.2}]}
---
apiVersion: v1
kind: Node
metadata: {name: gke-demo-default-pool-5dad52ed-w3x9}
spec: {podCIDR: 10.84.1.0/24}
status: {addresses: [{type: InternalIP, address: 10.128.0.3}]}
---
apiVersion: v1
kind: List
items:
${[
  ['default', 'test-service-745c798fc9-sfd9h', 'test-service', '10.84.0.165', 'k0h1', 8080],
  ['default', 'client-green-7b78d7c957-68mv4', 'client-green', '10.84.0.252', 'k0h1', 0],
  ['default', 'client-red-5689846f5b-b5ccx', 'client-red', '10.84.1.180', 'w3x9', 0],
  ['shop', 'frontend-6c8d5f7b9d-x2k4p', 'frontend', '10.84.1.20', 'w3x9', 8080],
  ['shop', 'checkout-5f9c7d8b6c-q8w3e', 'checkout', '10.84.0.30', 'k0h1', 5050],
  ['shop', 'redis-cart-7d9f8c6b5a-m4n7b', 'redis-cart', '10.84.1.40', 'w3x9', 6379],
]
  .map(
    ([ns, name, app, ip, node, port]) => `- apiVersion: v1
  kind: Pod
  metadata:
    name: ${name}
    namespace: ${ns}
    labels: {app: ${app}}
    ownerReferences: [{kind: ReplicaSet, name: ${String(name).replace(/-[a-z0-9]+$/, '')}, controller: true}]
  spec:
    nodeName: gke-demo-default-pool-5dad52ed-${node}
    containers: [{name: main, ports: [${port ? `{containerPort: ${port}, name: http}, {containerPort: 15021, name: health}` : ''}]}]
  status: {phase: Running, podIP: ${ip}}`,
  )
  .join('\n')}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-green
  namespace: default
  annotations: {policy.network.gke.io/enable-logging: "true"}
spec:
  podSelector: {matchLabels: {app: test-service}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client-green}}}]}]
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: frontend-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: checkout}}}]
    ports: [{port: http}]
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]
    ports: [{port: 443}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: checkout-from-frontend, namespace: shop}
spec:
  podSelector: {matchLabels: {app: checkout}}
  ingress: [{from: [{podSelector: {matchLabels: {app: frontend}}}], ports: [{port: 5050}]}]
---
apiVersion: networking.gke.io/v1alpha1
kind: NetworkLogging
metadata: {name: default}
spec:
  cluster:
    allow: {log: true, delegate: false}
    deny: {log: true, delegate: false}
`;

/** One tick's connection attempts: [connection, seconds after the tick]. */
const SCENARIO: [Omit<Connection, 'srcPort'>, number][] = [
  [{ srcIp: '10.84.0.252', destIp: '10.84.0.165', destPort: 8080, protocol: 'tcp' }, 0], // allowed by allow-green
  [{ srcIp: '10.84.1.180', destIp: '10.84.0.165', destPort: 8080, protocol: 'tcp' }, 0], // denied, retried: aggregated
  [{ srcIp: '10.84.1.180', destIp: '10.84.0.165', destPort: 8080, protocol: 'tcp' }, 0.2],
  [{ srcIp: '10.84.1.180', destIp: '10.84.0.165', destPort: 8080, protocol: 'tcp' }, 0.6],
  [{ srcIp: '10.84.0.1', destIp: '10.84.0.165', destPort: 15021, protocol: 'tcp' }, 0.1], // kubelet probe
  [{ srcIp: '10.84.1.20', destIp: '10.84.0.30', destPort: 5050, protocol: 'tcp' }, 0.3], // frontend → checkout
  [{ srcIp: '10.84.1.20', destIp: '142.250.72.14', destPort: 443, protocol: 'tcp' }, 0.4], // cluster-external
  [{ srcIp: '10.84.1.20', destIp: '10.84.1.40', destPort: 6379, protocol: 'tcp' }, 0.5], // denied on egress
];

export interface DemoOptions {
  sink: EntrySink;
  project: string;
  cluster?: string;
  location?: string;
  intervalMs?: number;
}

export async function startDemo(options: DemoOptions): Promise<{ stop(): Promise<void> }> {
  const warnings: string[] = [];
  const { cluster } = buildCluster(parseManifestText(DEMO_MANIFESTS, 'demo', warnings), undefined, warnings);
  if (warnings.length) componentLogger('netpol').warn({ warnings }, 'demo manifests');
  const batching = new BatchingSink(options.sink, { flushMs: 500 });
  const resource = { project: options.project, cluster: options.cluster ?? 'demo', location: options.location ?? 'local' };
  const recorder = new PolicyActionRecorder(cluster, { settings: DEFAULT_SETTINGS, emit: (r) => batching.add(recordToEntry(r, resource)) });
  let srcPort = 32768;
  const tick = (): void => {
    const now = Date.now() / 1000;
    for (const [conn, offset] of SCENARIO) {
      srcPort = srcPort >= 60999 ? 32768 : srcPort + 1;
      const t = now + offset;
      recorder.onFlow({ line: 0, timestamp: new Date(t * 1000).toISOString(), t, conn: { ...conn, srcPort } });
    }
  };
  tick();
  const timer = setInterval(tick, options.intervalMs ?? 2000);
  return {
    async stop() {
      clearInterval(timer);
      recorder.finish();
      // The sink belongs to the caller: flush into it, do not close it.
      await batching.flush();
    },
  };
}
