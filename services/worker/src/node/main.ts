/**
 * `node services/worker/dist/node/main.js [flags]`: the worker process. Configuration from
 * defaults < `--config` JSON file < `KILN_*` environment < flags (see `config.ts`, `--help`).
 * Logs are pino JSON lines on stdout. SIGTERM / SIGINT drain (no new task, running ones finish
 * or are handed back), then exit 0; a second SIGINT exits at once.
 */
import { KilnError, boundLogFields } from '@kiln/protocol';
import { OpsServer, startTracing } from '@kiln/ops';
import { openStore } from '@kiln/store';
import { pino } from 'pino';
import { FLAGS_HELP, loadConfig } from './config.js';
import { WorkerMetrics } from './metrics.js';
import { READINESS, WorkerNode } from './worker-node.js';
import { currentUserNamespace } from '../runtime/userns.js';
import {
  CGROUP_ROOT_ENV,
  USERNS_ENV,
  delegateCgroup,
  prepareRemappedDirs,
  runInUserNamespace,
  userNamespacePlan,
} from './user-namespace.js';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(FLAGS_HELP);
    return;
  }
  const config = loadConfig({ argv, env: process.env });
  const plan = await userNamespacePlan({
    usernsRemap: config.usernsRemap,
    env: process.env,
    argv: process.argv.slice(1),
  });
  if (plan !== undefined) {
    // This process only starts the worker in its user namespace and waits for it.
    const env: Record<string, string> = { [USERNS_ENV]: plan.mode };
    if (plan.mode === 'remap') {
      await prepareRemappedDirs(config, plan);
      env[CGROUP_ROOT_ENV] = await delegateCgroup(
        `kiln-userns-${plan.uids.start}`,
        plan.uids.start,
      );
    }
    process.exit(await runInUserNamespace(plan, env));
  }
  const tracing = await startTracing('kiln-worker', process.env);
  const log = pino({
    level: config.logLevel,
    base: { pid: process.pid, service: 'kiln-worker' },
    formatters: { log: (o) => boundLogFields(o) },
  });
  // The listeners come first: /healthz answers while the worker starts, /readyz is 503 until it
  // registered (a busy port fails here, before anything is registered). One listener serves
  // both when --health-listen and --metrics-listen name the same address.
  const started: { node?: WorkerNode } = {};
  const metrics = config.metricsListen
    ? new WorkerMetrics(config.slots, () => started.node?.runningTasks ?? 0)
    : undefined;
  const scrape = metrics ? { metrics: () => metrics.scrape() } : {};
  const shared = config.metricsListen === config.healthListen;
  const health = config.healthListen
    ? await OpsServer.listen('health listener', config.healthListen, {
        checks: Object.fromEntries(
          READINESS.map((name) => [name, () => started.node?.readiness()[name]() ?? false]),
        ),
        ...(shared ? scrape : {}),
      })
    : undefined;
  if (health) log.info({ addr: config.healthListen, port: health.port }, 'health listening');
  const ops =
    metrics && !shared
      ? await OpsServer.listen('metrics listener', config.metricsListen!, {
          ...scrape,
          health: false,
        })
      : undefined;
  if (ops) log.info({ addr: config.metricsListen, port: ops.port }, 'metrics listening');
  const node = await WorkerNode.start(config, {
    logger: log,
    ...(metrics
      ? {
          store: metrics.countStore(await openStore(config.store)),
          onGcCollected: (bytes: number) => {
            metrics.gcCollections.inc();
            metrics.gcRemovedBytes.inc(bytes);
          },
        }
      : {}),
  });
  started.node = node;
  if (config.userNamespace !== undefined) {
    const ns = await currentUserNamespace();
    log.info(
      { userNamespace: config.userNamespace, ids: ns?.describe() },
      'worker runs in a user namespace',
    );
  }
  let stopping = false;
  const stop = (signal: 'SIGTERM' | 'SIGINT'): void => {
    if (stopping) {
      // A second Ctrl-C means "now"; a repeated SIGTERM (a process manager signalling the group
      // and the process) changes nothing: the drain has its own timeout.
      if (signal === 'SIGTERM') return;
      log.warn({ signal }, 'exiting without drain');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'signal received');
    node
      .drain()
      .then(() => tracing.shutdown())
      .then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err }, 'drain failed');
          process.exit(1);
        },
      );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: unknown) => {
  const code = err instanceof KilnError ? ` [${err.code}]` : '';
  process.stderr.write(`kiln worker: ${err instanceof Error ? err.message : String(err)}${code}\n`);
  process.exit(1);
});
