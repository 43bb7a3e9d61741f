import { statSync, watch, type FSWatcher } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { LineCounter, parseAllDocuments } from 'yaml';
import { componentLogger } from '../telemetry/index.ts';
import { NetpolError } from './errors.ts';
import { type LoggingSetting, DEFAULT_LOGGING, parseNetworkLogging } from './logging.ts';
import { Cluster, compilePolicy, type CompiledPolicy, type KubeObject, namespaceFrom, type Namespace, networkPolicyProblems, type Node, nodeFrom, podFrom, type Pod } from './model.ts';

/**
 * Reads Kubernetes manifests (multi-document YAML or JSON, `kind: List` as `kubectl get -o yaml` prints) into a
 * Cluster, and watches them so a changed policy, label or logging setting applies to later connections.
 */
export interface SourcedObject {
  object: KubeObject;
  /** `file:line` of the document, for messages. */
  where: string;
}

export interface ManifestLoad {
  cluster: Cluster;
  /** Objects skipped and why (unknown kinds, pods without IPs, rejected policies, unparsable documents). */
  warnings: string[];
  /** Set when the NetworkLogging object is invalid; `cluster.logging` then holds the previous setting. */
  loggingError?: NetpolError;
}

const MAX_MANIFEST_BYTES = 64 * 1024 * 1024;
const WORKLOAD_KINDS = new Set(['Deployment', 'ReplicaSet', 'StatefulSet', 'DaemonSet', 'Job', 'CronJob', 'ReplicationController']);

/** Every object in one manifest text; unparsable documents become warnings naming file and line. */
export function parseManifestText(text: string, source: string, warnings: string[]): SourcedObject[] {
  const objects: SourcedObject[] = [];
  // `kubectl get -o json` output: JSON.parse is far faster than a YAML parser on large clusters.
  if (/^\s*[{[]/.test(text)) {
    try {
      flatten(JSON.parse(text), `${source}:1`, objects, warnings);
      return objects;
    } catch {
      objects.length = 0; // not one JSON document: YAML below reports where it breaks
    }
  }
  const lineCounter = new LineCounter();
  const documents = parseAllDocuments(text, { lineCounter, uniqueKeys: false });
  for (const doc of Array.isArray(documents) ? documents : [documents]) {
    const start = doc.contents?.range?.[0] ?? doc.range[0];
    const where = `${source}:${lineCounter.linePos(start).line}`;
    if (doc.errors.length) {
      const e = doc.errors[0]!;
      warnings.push(`${source}:${e.linePos?.[0].line ?? lineCounter.linePos(start).line}: malformed YAML, document skipped: ${e.message.split('\n')[0]}`);
      continue;
    }
    const value: unknown = doc.toJS({ maxAliasCount: 100 });
    if (value === null || value === undefined) continue;
    flatten(value, where, objects, warnings);
  }
  return objects;
}

function flatten(value: unknown, where: string, out: SourcedObject[], warnings: string[]): void {
  if (typeof value !== 'object' || Array.isArray(value) || value === null) {
    warnings.push(`${where}: not a Kubernetes object, skipped`);
    return;
  }
  const obj = value as KubeObject & { items?: unknown };
  if (typeof obj.kind === 'string' && obj.kind.endsWith('List') && Array.isArray(obj.items)) {
    for (const item of obj.items) flatten(item, where, out, warnings);
    return;
  }
  out.push({ object: obj, where });
}

async function manifestFiles(path: string): Promise<string[]> {
  const info = await stat(path);
  if (!info.isDirectory()) return [path];
  const names = (await readdir(path)).filter((n) => /\.(ya?ml|json)$/i.test(n)).sort();
  return names.map((n) => join(path, n));
}

/** Builds the cluster from objects; an invalid NetworkLogging keeps `previousLogging`. */
export function buildCluster(objects: SourcedObject[], previousLogging: LoggingSetting = DEFAULT_LOGGING, warnings: string[] = []): ManifestLoad {
  const namespaces = new Map<string, Namespace>();
  const nodes: Node[] = [];
  const podObjects: SourcedObject[] = [];
  const controllers: KubeObject[] = [];
  const policies = new Map<string, CompiledPolicy>();
  let logging: LoggingSetting | undefined;
  let loggingError: NetpolError | undefined;
  const unknownKinds = new Map<string, string>();
  for (const { object, where } of objects) {
    const kind = object.kind ?? '';
    const name = object.metadata?.name ?? '';
    switch (kind) {
      case 'Namespace':
        namespaces.set(name, namespaceFrom(object));
        break;
      case 'Node':
        nodes.push(nodeFrom(object));
        break;
      case 'Pod':
        podObjects.push({ object, where });
        break;
      case 'NetworkPolicy': {
        if (!String(object.apiVersion ?? 'networking.k8s.io/v1').startsWith('networking.k8s.io/')) {
          unknownKinds.set(`${object.apiVersion} ${kind}`, where);
          break;
        }
        const problems = networkPolicyProblems(object);
        const namespace = object.metadata?.namespace || 'default';
        if (problems.length) {
          warnings.push(`${where}: NetworkPolicy.networking.k8s.io "${name}" is invalid: ${problems.join(', ')} (namespace ${namespace}; not applied)`);
          break;
        }
        policies.set(`${namespace}/${name}`, compilePolicy(object));
        break;
      }
      case 'NetworkLogging':
        if (name !== 'default') {
          warnings.push(`${where}: NetworkLogging "${name}" ignored: the cluster's only NetworkLogging object is named "default"`);
          break;
        }
        try {
          logging = parseNetworkLogging(object.spec);
          loggingError = undefined;
        } catch (err) {
          if (!(err instanceof NetpolError)) throw err;
          loggingError = err;
        }
        break;
      default:
        if (WORKLOAD_KINDS.has(kind)) controllers.push(object);
        else if (!unknownKinds.has(kind)) unknownKinds.set(kind || '(no kind)', where);
    }
  }
  for (const [kind, where] of unknownKinds) warnings.push(`${where}: kind ${kind} is not used by netpol, skipped`);
  const pods: Pod[] = [];
  for (const { object, where } of podObjects) {
    const pod = podFrom(object, controllers);
    if (typeof pod === 'string') warnings.push(`${where}: pod ${object.metadata?.namespace || 'default'}/${object.metadata?.name ?? ''} ${pod}; its traffic is treated as a non-pod address`);
    else pods.push(pod);
  }
  const cluster = new Cluster({ namespaces: [...namespaces.values()], nodes, pods, policies: [...policies.values()] }, loggingError ? previousLogging : (logging ?? previousLogging));
  return { cluster, warnings, ...(loggingError ? { loggingError } : {}) };
}

/** Reads every path (files, or directories of .yaml/.yml/.json) and builds the cluster. */
export async function loadManifests(paths: string[], previousLogging?: LoggingSetting): Promise<ManifestLoad> {
  const warnings: string[] = [];
  const objects: SourcedObject[] = [];
  for (const path of paths) {
    for (const file of await manifestFiles(path)) {
      const info = await stat(file);
      if (info.size > MAX_MANIFEST_BYTES) throw new NetpolError('MANIFEST_PARSE', `${file}: ${info.size} bytes is more than the ${MAX_MANIFEST_BYTES}-byte limit for a manifest file`);
      objects.push(...parseManifestText(await readFile(file, 'utf8'), file, warnings));
    }
  }
  return buildCluster(objects, previousLogging, warnings);
}

/**
 * Reloads the manifests when a file changes (debounced, so an editor's several writes make one reload) and hands the
 * new cluster over. An invalid NetworkLogging keeps the last valid setting; the error is reported through `onLoad`.
 */
export class ManifestWatcher {
  private watchers: FSWatcher[] = [];
  private timer: NodeJS.Timeout | undefined;
  private reloading: Promise<void> = Promise.resolve();
  private readonly log = componentLogger('netpol');

  constructor(
    private readonly paths: string[],
    private logging: LoggingSetting,
    private readonly onLoad: (load: ManifestLoad) => void,
    private readonly debounceMs = 100,
  ) {}

  start(): void {
    const schedule = (): void => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => void this.reload(), this.debounceMs);
    };
    for (const path of this.paths) {
      // Editors replace a file rather than rewrite it, which ends a watch on the file itself: watch its folder.
      if (statSync(path).isDirectory()) this.watchers.push(watch(path, { persistent: false }, schedule));
      else {
        const name = basename(path);
        this.watchers.push(watch(dirname(path), { persistent: false }, (_event, changed) => changed === name && schedule()));
      }
    }
  }

  /** Reloads now; resolves once the new cluster was handed over (or the failure logged). */
  reload(): Promise<void> {
    this.reloading = this.reloading.then(async () => {
      try {
        const load = await loadManifests(this.paths, this.logging);
        this.logging = load.cluster.logging;
        this.onLoad(load);
      } catch (err) {
        this.log.error({ err }, 'could not reload the manifests; keeping the previous ones');
      }
    });
    return this.reloading;
  }

  close(): void {
    clearTimeout(this.timer);
    for (const w of this.watchers) w.close();
    this.watchers = [];
  }
}
