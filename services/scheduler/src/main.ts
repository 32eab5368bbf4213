/**
 * `node services/scheduler/dist/main.js [--listen host:port] [--nats url] [--platform os/arch]
 * [--log-level level] [--store-dir DIR]`: the scheduler service. Connects to NATS, starts the Dispatcher and serves
 * `kiln.control.v1.Control` over gRPC. SIGTERM/SIGINT: stop serving (running builds fail with a
 * retryable SCHEDULER_UNAVAILABLE; their task records stay for the next scheduler), then exit.
 *
 * Base image configs for the Dockerfile frontend come from the registries themselves
 * (`registryMetaResolver`: `@kiln/registry` with the docker config's credentials and helpers;
 * `--insecure-registries` for plain HTTP ones).
 * Environment is read here and only here (see config.ts for the keys).
 */
import { openStore } from '@kiln/store';
import { connect } from '@nats-io/transport-node';
import { pino } from 'pino';
import { loadConfig } from './config.js';
import { ControlServer } from './control/control-server.js';
import { Dispatcher } from './dispatch/index.js';
import { registryMetaResolver } from './registry-meta-resolver.js';

async function main(): Promise<void> {
  const config = loadConfig(process.env, process.argv.slice(2));
  const log = pino({ name: 'kiln-scheduler', level: config.logLevel });
  const nc = await connect({
    servers: config.natsUrl.split(','),
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    // No stack captured per request: a measurable share of dispatch CPU (bench/README.md).
    noAsyncTraces: true,
  });
  const dlog = log.child({ component: 'dispatch' });
  const dispatcher = await Dispatcher.start({
    nc,
    affinityDelayMs: config.affinityDelayMs,
    heartbeatTimeoutMs: config.heartbeatTimeoutMs,
    maxAttempts: config.maxAttempts,
    onEvent: (e) => {
      if (e.type === 'error') dlog.warn({ where: e.where, err: String(e.error) }, 'dispatch error');
      else if (e.type === 'failed' || e.type === 'redispatched' || e.type === 'result-lost')
        dlog.info(e, e.type);
      else dlog.debug(e, e.type);
    },
  });
  const store = config.store ? await openStore(config.store) : undefined;
  if (!store) log.warn('no content store configured: local directories and exporters are off');
  const server = new ControlServer({
    dispatcher,
    ...(store ? { store } : {}),
    defaultPlatform: config.defaultPlatform,
    checksumTimeoutMs: config.checksumTimeoutMs,
    metaResolver: registryMetaResolver({ insecureRegistries: config.insecureRegistries }),
    log: log.child({ component: 'control' }),
  });
  await server.listen(config.listen);
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    void server
      .close()
      .then(() => dispatcher.close())
      .then(() => nc.close())
      .then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err: String(err) }, 'stop failed');
          process.exit(1);
        },
      );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

await main();
