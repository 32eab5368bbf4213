/**
 * `node services/scheduler/dist/main.js [--listen host:port] [--nats url] [--platform os/arch]
 * [--log-level level] [--store-dir DIR] [--tlscert F --tlskey F [--tlscacert F]]
 * [--tokens-file F] [--allow-insecure-entitlement E]... [--shared-cache]
 * [--farm-registry-credentials] [--insecure-listen] [--cache-ttl D] [--admin-tenant T]...`:
 * the scheduler service. Connects to NATS, starts the Dispatcher and serves
 * `kiln.control.v1.Control` over gRPC. SIGTERM/SIGINT: stop serving (running builds fail with a
 * retryable SCHEDULER_UNAVAILABLE; their task records stay for the next scheduler), then exit.
 * SIGHUP, or a change of one of the files: the TLS certificates and the tokens file are read
 * again (a file that fails to load keeps the previous contents, and says so in the log).
 *
 * Base image configs for the Dockerfile frontend come from the registries themselves
 * (`registryMetaResolver`: `@kiln/registry` with the docker config's credentials and helpers;
 * `--insecure-registries` for plain HTTP ones).
 * Environment is read here and only here (see config.ts for the keys).
 */
import { readFileSync, unwatchFile, watchFile } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { NATS_AUTH_HELP, connectNats } from '@kiln/bus';
import { KilnError, boundLogFields } from '@kiln/protocol';
import { openStore } from '@kiln/store';
import { OpsServer, startTracing } from '@kiln/ops';
import { pino } from 'pino';
import { authConfigured, isLoopbackListen, loadConfig } from './config.js';
import type { SchedulerConfig } from './config.js';
import { Authenticator, parseTokens } from './control/auth.js';
import type { TenantToken } from './control/auth.js';
import { TlsFilesProvider } from './control/tls.js';
import { ControlServer } from './control/control-server.js';
import { Dispatcher } from './dispatch/index.js';
import { SchedulerMetrics } from './metrics.js';
import { registryMetaResolver } from './registry-meta-resolver.js';

const USAGE = `usage: kiln-scheduler [flags]

Serves kiln.control.v1.Control and grpc.health.v1.Health over gRPC; dispatches on NATS.
Flags win over the environment (KILN_*); docs/running-a-farm.md section 3 has the table.

  --listen HOST:PORT|unix:P control API (KILN_SCHEDULER_LISTEN, default 127.0.0.1:8470)
  --nats URL               the bus (KILN_NATS_URL, default nats://127.0.0.1:4222)
  --platform OS/ARCH       default build platform (KILN_DEFAULT_PLATFORM, linux/amd64)
  --store-dir DIR          filesystem content store (KILN_STORE_DIR), or KILN_S3_ENDPOINT,
                           KILN_S3_BUCKET, KILN_S3_ACCESS_KEY, KILN_S3_SECRET_KEY
  --tlscert F --tlskey F   server TLS (KILN_TLS_CERT, KILN_TLS_KEY)
  --tlscacert F            mutual TLS: the clients' CA (KILN_TLS_CACERT)
  --tokens-file F          bearer tokens per tenant (KILN_TOKENS_FILE, or KILN_TOKENS)
  --insecure-listen        serve a non-loopback address without TLS and auth (KILN_INSECURE_LISTEN)
  --allow-insecure-entitlement E   security.insecure or network.host, repeatable
                           (KILN_ALLOW_INSECURE_ENTITLEMENTS, comma list)
  --shared-cache           one cache namespace for every tenant (KILN_SHARED_CACHE)
  --farm-registry-credentials   base images may use the scheduler's docker config
  --insecure-registries A,B   plain-HTTP registries (KILN_INSECURE_REGISTRIES)
  --cache-ttl DUR          lifetime of task records (KILN_CACHE_TTL, default 24h)
  --frontend-limits K=V,.. Dockerfile frontend bounds (KILN_FRONTEND_LIMITS)
  --tenant-limits T:K=V,.. a tenant's RUN limits (memory, pids, cpuShares, time), capped by
                           each worker's own; repeatable (KILN_TENANT_LIMITS, ';' between tenants)
  --metrics-listen H:P     HTTP /metrics (Prometheus text), /healthz, /readyz
                           (KILN_METRICS_LISTEN; default none)
  --log-level L            pino level (KILN_LOG_LEVEL, default info)
  -h, --help               this text

${NATS_AUTH_HELP}`;

/** The tokens of the configuration: the tokens file's, then `KILN_TOKENS`. */
function readTokens(c: SchedulerConfig): TenantToken[] {
  return [
    ...(c.tokensFile ? parseTokens(readFileSync(c.tokensFile, 'utf8'), c.tokensFile) : []),
    ...(c.tokens ? parseTokens(c.tokens, 'KILN_TOKENS') : []),
  ];
}

async function main(): Promise<void> {
  // grpc-js's own error lines (e.g. on a busy port) would repeat what the error says, unstructured.
  grpc.setLogVerbosity(grpc.logVerbosity.NONE);
  if (process.argv.includes('--help') || process.argv.includes('-h')) {
    process.stdout.write(USAGE);
    return;
  }
  const config = loadConfig(process.env, process.argv.slice(2));
  const tracing = await startTracing('kiln-scheduler', process.env);
  const log = pino({
    name: 'kiln-scheduler',
    level: config.logLevel,
    formatters: { log: (o) => boundLogFields(o) },
  });
  const tokens = readTokens(config);
  const auth = new Authenticator({
    tokens,
    clientCertificates: !!config.tlsCaCert,
    allow: config.allowEntitlements,
    admins: config.adminTenants,
    required: authConfigured(config),
  });
  const tls =
    config.tlsCert && config.tlsKey
      ? await TlsFilesProvider.open({
          cert: config.tlsCert,
          key: config.tlsKey,
          ...(config.tlsCaCert ? { ca: config.tlsCaCert } : {}),
        })
      : undefined;
  const reload = (why: string): void => {
    try {
      if (config.tokensFile || config.tokens) auth.setTokens(readTokens(config));
    } catch (err) {
      log.error({ why, err: String(err) }, 'tokens reload failed: keeping the previous tokens');
    }
    tls?.reload().then(
      () => log.info({ why }, 'tls certificates reloaded'),
      (err: unknown) =>
        log.error({ why, err: String(err) }, 'tls reload failed: keeping the previous ones'),
    );
  };
  const watched = [config.tokensFile, config.tlsCert, config.tlsKey, config.tlsCaCert].filter(
    (f): f is string => !!f,
  );
  for (const f of watched) watchFile(f, { interval: 2_000, persistent: false }, () => reload(f));
  process.on('SIGHUP', () => reload('SIGHUP'));
  const nc = await connectNats(config.natsUrl, config.natsAuth);
  const dlog = log.child({ component: 'dispatch' });
  const dispatcher = await Dispatcher.start({
    nc,
    affinityDelayMs: config.affinityDelayMs,
    heartbeatTimeoutMs: config.heartbeatTimeoutMs,
    maxAttempts: config.maxAttempts,
    bus: { recordTtlMs: config.cacheTtlMs, applyRecordTtl: true },
    onEvent: (e) => {
      if (e.type === 'error') dlog.warn({ where: e.where, err: String(e.error) }, 'dispatch error');
      else if (e.type === 'failed' || e.type === 'redispatched' || e.type === 'result-lost')
        dlog.info(e, e.type);
      else dlog.debug(e, e.type);
    },
  });
  const store = config.store ? await openStore(config.store) : undefined;
  if (!store) log.warn('no content store configured: local directories and exporters are off');
  const metrics = config.metricsListen ? new SchedulerMetrics(dispatcher) : undefined;
  const server = new ControlServer({
    dispatcher,
    ...(store ? { store } : {}),
    defaultPlatform: config.defaultPlatform,
    checksumTimeoutMs: config.checksumTimeoutMs,
    metaResolver: registryMetaResolver({
      insecureRegistries: config.insecureRegistries,
      // The scheduler's own docker config only when the farm says so: else the caller's, or none.
      ...(config.farmRegistryCredentials ? {} : { dockerConfig: false }),
    }),
    insecureRegistries: config.insecureRegistries,
    farmRegistryCredentials: config.farmRegistryCredentials,
    log: log.child({ component: 'control' }),
    auth,
    sharedCache: config.sharedCache,
    frontendLimits: config.frontendLimits,
    tenantLimits: config.tenantLimits,
    ...(metrics ? { metrics } : {}),
  });
  await server.listen(config.listen, tls?.serverCredentials());
  const ops = metrics
    ? await OpsServer.listen('metrics listener', config.metricsListen!, {
        metrics: () => metrics.scrape(),
        checks: { control: () => server.health.status === 'SERVING' },
      })
    : undefined;
  if (ops) log.info({ addr: config.metricsListen, port: ops.port }, 'metrics listening');
  // Health follows the bus: NOT_SERVING while NATS is away (the dispatcher cannot place work).
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') server.health.setServing(false);
      else if (s.type === 'reconnect') server.health.setServing(true);
    }
  })();
  const security = {
    tls: tls ? (config.tlsCaCert ? 'mutual' : 'server') : 'off',
    tokens: tokens.length,
    entitlements: config.allowEntitlements,
    sharedCache: config.sharedCache,
  };
  if (!authConfigured(config) && isLoopbackListen(config.listen))
    log.info(
      { listen: config.listen, ...security },
      'no authentication configured: serving loopback only, every caller is tenant local',
    );
  else if (!isLoopbackListen(config.listen) && (!tls || !authConfigured(config)))
    log.warn(
      { listen: config.listen, ...security },
      'insecure listen: anyone who reaches this address can run builds on the workers',
    );
  else log.info({ listen: config.listen, ...security }, 'control api secured');
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    for (const f of watched) unwatchFile(f);
    void server
      .close()
      .then(() => ops?.close())
      .then(() => dispatcher.close())
      .then(() => nc.close())
      .then(() => tracing.shutdown())
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

try {
  await main();
} catch (err) {
  // A configuration or startup error: one clear line, no stack (KILN_DEBUG=1 shows it).
  const code = err instanceof KilnError ? ` [${err.code}]` : '';
  process.stderr.write(
    `kiln-scheduler: ${err instanceof Error ? err.message : String(err)}${code}\n`,
  );
  if (process.env.KILN_DEBUG && err instanceof Error) process.stderr.write(`${err.stack ?? ''}\n`);
  process.exit(2);
}
