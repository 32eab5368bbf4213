/**
 * `node services/worker/dist/node/main.js [flags]`: the worker process. Configuration from
 * defaults < `--config` JSON file < `KILN_*` environment < flags (see `config.ts`, `--help`).
 * Logs are pino JSON lines on stdout. SIGTERM / SIGINT drain (no new task, running ones finish
 * or are handed back), then exit 0; a second SIGINT exits at once.
 */
import { KilnError, boundLogFields } from '@kiln/protocol';
import { OpsServer } from '@kiln/ops';
import { pino } from 'pino';
import { FLAGS_HELP, loadConfig } from './config.js';
import { READINESS, WorkerNode } from './worker-node.js';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(FLAGS_HELP);
    return;
  }
  const config = loadConfig({ argv, env: process.env });
  const log = pino({
    level: config.logLevel,
    base: { pid: process.pid, service: 'kiln-worker' },
    formatters: { log: (o) => boundLogFields(o) },
  });
  // The health listener comes first: /healthz answers while the worker starts, /readyz is 503
  // until it registered (a busy port fails here, before anything is registered).
  const started: { node?: WorkerNode } = {};
  const health = config.healthListen
    ? await OpsServer.listen('health listener', config.healthListen, {
        checks: Object.fromEntries(
          READINESS.map((name) => [name, () => started.node?.readiness()[name]() ?? false]),
        ),
      })
    : undefined;
  if (health) log.info({ addr: config.healthListen, port: health.port }, 'health listening');
  const node = await WorkerNode.start(config, { logger: log });
  started.node = node;
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
    node.drain().then(
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
