import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { DEFAULT_PROJECT } from '../model/index.ts';
import { serveMetrics } from '../telemetry/index.ts';
import { createProgress } from './progress.ts';

interface NetpolFlags {
  manifests?: string[];
  flows?: string;
  format: string;
  node?: string;
  logFile?: string;
  config?: string;
  server?: string;
  token?: string;
  cluster?: string;
  location?: string;
  project: string;
  metricsListen?: string;
  watch: boolean;
}

export function register(program: Command): void {
  // `netpol explain --manifests …` has its own --manifests: options must belong to the command they follow, or netpol
  // would take explain's. The root program has no options of its own, so this changes nothing for other commands.
  program.enablePositionalOptions();
  const netpol = program
    .command('netpol')
    .description('Kubernetes NetworkPolicy verdicts for connections, written as GKE policy-action records')
    .enablePositionalOptions()
    // Checked in the action: commander would also demand a parent's required options of `netpol explain`.
    .option('--manifests <paths...>', 'Kubernetes manifests (YAML/JSON files or folders): Namespaces, Nodes, Pods, NetworkPolicies, NetworkLogging (required)')
    .option('--flows <file>', 'connection attempts, NDJSON (`-` for stdin) (required)')
    .option('--format <format>', 'flow format: tuple | hubble (`hubble observe -o json`)', 'tuple')
    .option('--node <name>', 'log only verdicts enforced on this node (default: every node)')
    .option('--log-file <path>', 'write records here, rotated (a folder means FOLDER/policy_action.log); `-` for stdout')
    .option('--config <file>', 'YAML: rateLimitPerSecond, denyAggregationWindowSeconds, denyAggregationMaxKeys, rotateBytes, rotateKeep, connectionTimeoutSeconds')
    .option('--server <url>', 'also store each record as a LogEntry in this Custos store')
    .option('--token <token>', 'bearer token for --server (default: $CUSTOS_TOKEN)')
    .option('--cluster <name>', 'cluster_name of the k8s_node resource')
    .option('--location <location>', 'location of the k8s_node resource')
    .option('--project <project>', 'project of logName and resource', DEFAULT_PROJECT)
    .option('--metrics-listen <host:port>', 'serve /metrics (policy_logging_*) here')
    .option('--no-watch', 'do not reload the manifests when they change')
    .action(async (flags: NetpolFlags) => {
      if (!flags.manifests?.length || !flags.flows) throw new Error('netpol needs --manifests PATH… and --flows FILE|- (see custos netpol --help)');
      if (flags.format !== 'tuple' && flags.format !== 'hubble') throw new Error(`--format must be tuple or hubble, not "${flags.format}"`);
      const [{ parseSettings, runNetpol }, { clientToken, HttpEntrySink }] = await Promise.all([import('../netpol/index.ts'), import('../ingest/sink.ts')]);
      const settings = flags.config ? parseSettings(readFileSync(flags.config, 'utf8'), flags.config) : undefined;
      const logFile = flags.logFile ?? (flags.server ? undefined : '-');
      const metricsServer = flags.metricsListen ? await serveMetrics(flags.metricsListen) : undefined;
      const progress = createProgress('netpol');
      try {
        const summary = await runNetpol({
          manifests: flags.manifests,
          flows: flags.flows,
          format: flags.format,
          ...(flags.node !== undefined ? { node: flags.node } : {}),
          ...(logFile !== undefined ? { logFile } : {}),
          ...(settings ? { settings } : {}),
          ...(flags.server ? { sink: new HttpEntrySink(flags.server, clientToken(flags.token)) } : {}),
          resource: { project: flags.project, ...(flags.cluster ? { cluster: flags.cluster } : {}), ...(flags.location ? { location: flags.location } : {}) },
          watch: flags.watch,
          onProgress: (lines) => progress.tick(lines),
        });
        progress.finish(`${summary.lines.toLocaleString('en-US')} flow lines, ${summary.records.toLocaleString('en-US')} records, ${summary.badLines} bad lines skipped`);
      } finally {
        metricsServer?.close();
      }
    });

  netpol
    .command('explain')
    .description('why a connection is allowed or denied: the policies selecting each side and the rule that matched, or why none did')
    // Not variadic here: a variadic option would swallow SRC and DEST. Repeat it, or give a folder.
    .requiredOption('--manifests <path>', 'Kubernetes manifests (a YAML/JSON file or folder; repeat for more)', (path: string, previous: string[] = []) => [...previous, path])
    .option('--format <format>', 'text | json', 'text')
    .argument('<src>', 'source: IP address or namespace/pod')
    .argument('<dest>', 'destination and port: IP:PORT/PROTO, namespace/pod:PORT/PROTO ([v6]:PORT/PROTO; DEST/icmp); PORT may be a port name')
    .action(async (src: string, dest: string, flags: { manifests: string[]; format: string }) => {
      const { explainConnection, loadForRun, parseExplainArgs, renderExplanation } = await import('../netpol/index.ts');
      const { cluster } = await loadForRun(flags.manifests);
      const explanation = explainConnection(cluster, parseExplainArgs(cluster, src, dest));
      process.stdout.write(flags.format === 'json' ? JSON.stringify(explanation, null, 2) + '\n' : renderExplanation(explanation));
    });
}
