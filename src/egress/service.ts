import { unwatchFile, watchFile } from 'node:fs';
import { componentLogger } from '../telemetry/index.ts';
import { loadEgressConfig, type EgressConfig } from './config.ts';
import { egressMetrics } from './metrics.ts';
import type { RecordOutput } from './output.ts';
import { EgressProxy } from './proxy.ts';

/**
 * The long-running `custos egress`: a proxy bound to a config file that is reloaded on SIGHUP or when the file
 * changes (a config that fails validation is rejected and the running one kept), and drained on SIGTERM/SIGINT.
 */
export interface EgressService {
  proxy: EgressProxy;
  /** Re-reads the file; resolves true when the new config was applied. */
  reload(): Promise<boolean>;
  /** Drains and closes the output; idempotent. */
  stop(): Promise<void>;
  /** Resolves after a signal-triggered stop finished. */
  stopped: Promise<void>;
}

export async function runEgressService(options: {
  configFile: string;
  output: RecordOutput;
  /** Command-line overrides of the file's `listen` and `socks5`. */
  overrides?: Partial<Pick<EgressConfig, 'listen' | 'socks5'>>;
  handleSignals?: boolean;
}): Promise<EgressService> {
  const log = componentLogger('egress');
  const load = (): EgressConfig => ({ ...loadEgressConfig(options.configFile), ...options.overrides });
  const proxy = new EgressProxy({ config: load(), onRecord: (record) => options.output.write(record) });
  await proxy.start();

  let reloading = Promise.resolve(true);
  const reload = (): Promise<boolean> => {
    reloading = reloading.then(async () => {
      try {
        await proxy.reload(load());
        egressMetrics.reloads.inc({ result: 'applied' });
        return true;
      } catch (err) {
        egressMetrics.reloads.inc({ result: 'rejected' });
        log.error({ file: options.configFile, error: (err as Error).message }, 'config reload rejected; keeping the running config');
        return false;
      }
    });
    return reloading;
  };

  watchFile(options.configFile, { interval: 500 }, (now, before) => {
    if (now.mtimeMs !== before.mtimeMs || now.size !== before.size) void reload();
  });
  const onHup = (): void => void reload();

  let stopping: Promise<void> | undefined;
  let signalled: () => void = () => {};
  const stopped = new Promise<void>((resolve) => (signalled = resolve));
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      unwatchFile(options.configFile);
      process.off('SIGHUP', onHup);
      await proxy.drain();
      await options.output.close();
      signalled();
    })();
    return stopping;
  };
  const onTerm = (signal: string): void => {
    log.info({ signal, open: proxy.openConnections() }, 'draining egress proxy');
    void stop();
  };
  if (options.handleSignals ?? true) {
    process.on('SIGHUP', onHup);
    process.once('SIGTERM', onTerm);
    process.once('SIGINT', onTerm);
  }
  return { proxy, reload, stop, stopped };
}
