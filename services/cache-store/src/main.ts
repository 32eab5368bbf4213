/**
 * `node services/cache-store/dist/main.js [--once] [--interval 1h] [--keep-duration 24h]
 * [--dry-run] [--nats url] [NATS auth flags] [--store-dir DIR | KILN_S3_* env]`:
 * the store's garbage collector as a service. Each run reads the cache index from NATS (the
 * scheduler's NATS user, or any user that may read the `kiln_tasks` bucket), lists the farm's
 * content store, and deletes the blobs no record names that were not used within the keep
 * duration (see store-gc.ts for why that is safe while builds run). One run per interval, or one
 * run and exit with `--once`; a line per run in the log (pino JSON). SIGTERM/SIGINT: exit after
 * the run in progress.
 */
import { parseArgs } from 'node:util';
import {
  CACHE_STORE_INBOX_PREFIX,
  NATS_AUTH_FLAGS,
  NATS_AUTH_HELP,
  checkNatsAuth,
  connectNats,
  natsAuthFrom,
} from '@kiln/bus';
import { parseDuration } from '@kiln/common';
import { KilnError, boundLogFields } from '@kiln/protocol';
import { openStore, storeConfigFromEnv } from '@kiln/store';
import type { StoreConfig } from '@kiln/store';
import { OpsServer } from '@kiln/ops';
import { pino } from 'pino';
import { liveDigests } from './live-records.js';
import { CacheStoreMetrics } from './metrics.js';
import { collectStore, startStoreCollector } from './store-gc.js';
import type { StoreGcReport } from './store-gc.js';

const HELP = `usage: kiln-cache-store [options]
  --once                   one collection, then exit
  --interval D             time between collections (default 1h; KILN_GC_INTERVAL)
  --keep-duration D        unreferenced blobs used within D are kept (default 24h;
                           KILN_GC_KEEP_DURATION)
  --dry-run                report what would be deleted, delete nothing
  --nats URL               NATS server (KILN_NATS_URL, default nats://127.0.0.1:4222)
${NATS_AUTH_HELP}  --store-dir DIR          filesystem content store (KILN_STORE_DIR), or an S3 bucket
                           through KILN_S3_ENDPOINT, KILN_S3_BUCKET, KILN_S3_ACCESS_KEY,
                           KILN_S3_SECRET_KEY (KILN_S3_PREFIX, KILN_S3_REGION)
  --health-listen H:P      HTTP /healthz and /readyz: NATS connected, store reachable
                           (KILN_HEALTH_LISTEN; default none)
  --metrics-listen H:P     HTTP /metrics, Prometheus text: runs, deleted blobs and bytes, the
                           store's size at the last run (KILN_METRICS_LISTEN; default none;
                           may equal --health-listen)
  --log-level L            pino level (KILN_LOG_LEVEL, default info)
`;

const PROBE_DIGEST = `sha256:${'0'.repeat(64)}` as const;

class CacheStoreConfigError extends KilnError {
  constructor(message: string) {
    super('CONFIG_INVALID', message);
  }
}

function storeConfig(dir: string | undefined, env: NodeJS.ProcessEnv): StoreConfig {
  const { config, missing } = storeConfigFromEnv(env, dir);
  if (missing) throw new CacheStoreConfigError(`the S3 store needs ${missing.join(', ')}`);
  if (!config)
    throw new CacheStoreConfigError('no content store: give --store-dir or KILN_S3_* settings');
  return config;
}

function duration(flag: string, v: string): number {
  try {
    return parseDuration(v);
  } catch {
    throw new CacheStoreConfigError(`--${flag}: not a duration: ${v}`);
  }
}

async function main(): Promise<number> {
  const env = process.env;
  const { values: f } = parseArgs({
    options: {
      once: { type: 'boolean' },
      interval: { type: 'string' },
      'keep-duration': { type: 'string' },
      'dry-run': { type: 'boolean' },
      nats: { type: 'string' },
      'store-dir': { type: 'string' },
      'log-level': { type: 'string' },
      'health-listen': { type: 'string' },
      'metrics-listen': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
      ...NATS_AUTH_FLAGS,
    },
    strict: true,
  });
  if (f.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const log = pino({
    name: 'kiln-cache-store',
    formatters: { log: (o) => boundLogFields(o) },
    level: f['log-level'] ?? env.KILN_LOG_LEVEL ?? 'info',
  });
  const intervalMs = duration('interval', f.interval ?? env.KILN_GC_INTERVAL ?? '1h');
  const keepDurationMs = duration(
    'keep-duration',
    f['keep-duration'] ?? env.KILN_GC_KEEP_DURATION ?? '24h',
  );
  const store = await openStore(storeConfig(f['store-dir'] ?? env.KILN_STORE_DIR, env));
  const nc = await connectNats(
    f.nats ?? env.KILN_NATS_URL ?? 'nats://127.0.0.1:4222',
    // Its own inbox: what the farm's read-only cache-store role lets it receive on.
    { ...checkNatsAuth(natsAuthFrom(f, env)), inboxPrefix: CACHE_STORE_INBOX_PREFIX },
  );
  let natsUp = true;
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') natsUp = false;
      else if (s.type === 'reconnect') natsUp = true;
    }
  })();
  const healthListen = f['health-listen'] ?? env.KILN_HEALTH_LISTEN;
  const metricsListen = f['metrics-listen'] ?? env.KILN_METRICS_LISTEN;
  const metrics = metricsListen ? new CacheStoreMetrics() : undefined;
  const scrape = metrics ? { metrics: () => metrics.scrape() } : {};
  // One listener serves both when the two flags name the same address.
  const shared = metricsListen === healthListen;
  const health = healthListen
    ? await OpsServer.listen('health listener', healthListen, {
        checks: {
          nats: () => natsUp && !nc.isClosed(),
          // One stat of a digest no one stores: answers (undefined) when the store is reachable.
          // Within a probe's deadline: the store client itself rides out an outage for longer.
          store: () =>
            Promise.race([
              store.stat(PROBE_DIGEST).then(
                () => true,
                () => false,
              ),
              new Promise<boolean>((r) => setTimeout(() => r(false), 2_000).unref()),
            ]),
        },
        ...(shared ? scrape : {}),
      })
    : undefined;
  if (health) log.info({ addr: healthListen, port: health.port }, 'health listening');
  const ops =
    metrics && !shared
      ? await OpsServer.listen('metrics listener', metricsListen!, { ...scrape, health: false })
      : undefined;
  if (ops) log.info({ addr: metricsListen, port: ops.port }, 'metrics listening');
  const dryRun = f['dry-run'] === true;
  // A run starts by reading the index: the start of its duration.
  let runStarted = performance.now();
  const gc = {
    store,
    live: () => {
      runStarted = performance.now();
      return liveDigests(nc);
    },
    keepDurationMs,
    dryRun,
    onDelete: (b: { digest: string; size: number }) =>
      log.debug(b, dryRun ? 'would delete' : 'deleted'),
  };
  const report = (r: StoreGcReport): void => {
    metrics?.collected(r, (performance.now() - runStarted) / 1000, dryRun);
    log.info({ ...r, dryRun }, 'store collected');
  };
  try {
    if (f.once) {
      report(await collectStore(gc));
      return 0;
    }
    const collector = startStoreCollector({
      ...gc,
      intervalMs,
      firstRunMs: 0,
      onReport: report,
      onError: (err) => {
        metrics?.failed();
        log.error({ err: String(err) }, 'store collection failed');
      },
    });
    await new Promise<void>((r) => {
      for (const s of ['SIGTERM', 'SIGINT'] as const) process.once(s, () => r());
    });
    await collector.stop();
  } finally {
    await health?.close();
    await ops?.close();
    await nc.close();
  }
  return 0;
}

main().then(
  (code) => (process.exitCode = code),
  (err: unknown) => {
    process.stderr.write(
      `kiln-cache-store: ${err instanceof KilnError ? `${err.code}: ${err.message}` : String(err)}\n`,
    );
    process.exitCode = 1;
  },
);
