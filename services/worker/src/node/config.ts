/**
 * The worker process's configuration: one typed, validated object, loaded from defaults < a JSON
 * file < `KILN_*` environment < command-line flags. The environment and argv are passed in (only
 * `main.ts` reads `process`), so tests load configurations without touching the process.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism, homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import {
  NATS_AUTH_FLAGS,
  NATS_AUTH_HELP,
  NatsConfigError,
  checkNatsAuth,
  natsAuthFrom,
} from '@kiln/bus';
import type { NatsAuth, WorkerPlatform } from '@kiln/bus';
import type { TarLimits } from '@kiln/layers';
import type { StoreConfig } from '@kiln/store';
import { InvalidQuantityError, parseDuration, parseSize } from '@kiln/common';
import { WorkerConfigError } from './errors.js';
import {
  DEFAULT_GC_GRACE_MS,
  DEFAULT_GC_INTERVAL_MS,
  DEFAULT_GC_KEEP_DURATION_MS,
} from '../gc/policy.js';
import type { GcConfig } from '../gc/policy.js';
import { resolvePlatforms } from './platforms.js';
import type { TaskLimits } from '../runtime/index.js';
import { CGROUP_ROOT_ENV, USERNS_ENV } from './user-namespace.js';

export type { StoreConfig } from '@kiln/store';

/** The compiled configuration (every field defaulted and checked). */
export interface WorkerConfig {
  natsUrl: string;
  /** How to authenticate to NATS and TLS (`--nats-*` flags, `KILN_NATS_*`; `nats` in a file). */
  natsAuth: NatsAuth;
  /** Worker id; undefined: `<hostname>-<random>`. */
  id?: string;
  stateDir: string;
  store: StoreConfig;
  platforms: WorkerPlatform[];
  slots: number;
  labels: Record<string, string>;
  /** `local://<name>` sources served from these directories (tests, the embedded farm). */
  localDirs: Record<string, string>;
  heartbeatMs: number;
  drainTimeoutMs: number;
  /** Idle time after which held results are uploaded in the background (write-behind). */
  writeBehindIdleMs: number;
  /** A farm cache mount lock's lease: a holder that stops renewing loses it after this. */
  cacheMountLeaseMs: number;
  /** How long a RUN waits for another worker's announced cache mount upload. */
  cacheMountWaitMs: number;
  logLevel: string;
  /** `host:port` of the HTTP `/healthz` and `/readyz` listener; absent: none. */
  healthListen?: string;
  /** `host:port` of the Prometheus `/metrics` listener (may equal `healthListen`); absent: none. */
  metricsListen?: string;
  snapshotter: 'auto' | 'overlayfs' | 'native';
  runtime: 'auto' | 'crun' | 'runc';
  insecureRegistries: string[];
  /**
   * Tasks may use this worker's own registry credentials (its docker config) where the build's
   * client offers none (`--farm-registry-credentials`, `KILN_FARM_REGISTRY_CREDENTIALS=1`).
   * Default: pulls and pushes use only the client's credentials (through its session), else none.
   */
  farmRegistryCredentials: boolean;
  /**
   * Garbage collection of the local cache (`gc/policy.ts`); `keepBytes` undefined: 10% of the
   * state dir's filesystem, measured at start.
   */
  gc: Omit<GcConfig, 'keepBytes'> & { keepBytes?: number };
  /** Limits of every task's container (`runtime/cgroups.ts`); an absent field is no limit. */
  limits: TaskLimits;
  /**
   * Addresses a RUN in the sandbox network may not reach besides the worker's own (the farm's
   * control plane: the NATS server's host is added from `natsUrl`), as IPs, CIDRs or host names.
   */
  sandboxDeny: string[];
  /**
   * Bounds on what one archive ADD unpacks, or one layer applied, may unpack to (`limits.unpackSize`,
   * `limits.unpackFiles`): a decompression bomb fails its step typed and its partial snapshot goes.
   */
  unpack: TarLimits;
  /**
   * A root worker runs its builds in a user namespace mapping ids 0..65535 to this user's
   * subordinate ids (`--userns-remap USER`, `KILN_WORKER_USERNS_REMAP`, `usernsRemap`; see
   * `user-namespace.ts`). A worker started by another user always runs rootless.
   */
  usernsRemap?: string;
  /**
   * Set inside the user namespace: `rootless` or `remap` (the re-executed worker; the marker is
   * the environment the parent sets).
   */
  userNamespace?: 'rootless' | 'remap';
  /** The cgroup task groups are made under (a delegated one in a remapped namespace). */
  cgroupRoot?: string;
}

/** Task limits as written: sizes (`2GB`, a plain number is MB), durations (`30m`), counts. */
export interface LimitsConfigInput {
  memory?: string | number;
  pids?: string | number;
  cpuShares?: string | number;
  time?: string | number;
  /** Unpacked bytes of one archive or layer (`16GB`; 0: none). */
  unpackSize?: string | number;
  /** Entries of one archive or layer (0: none). */
  unpackFiles?: string | number;
}

/** What one archive or layer may unpack to unless configured: far above any real image layer. */
export const DEFAULT_UNPACK_MAX_BYTES = 16 * 1024 ** 3;
export const DEFAULT_UNPACK_MAX_FILES = 1_000_000;

/** The pids limit of a task unless configured: enough for any build, not for a fork bomb. */
export const DEFAULT_PIDS_LIMIT = 4096;

/** A boolean as written: true, or `on`/`true`/`1`. */
function flag(v: boolean | string | undefined): boolean {
  return typeof v === 'boolean' ? v : ['on', 'true', '1'].includes((v ?? '').toLowerCase());
}

/** GC settings as written: sizes (`2GB`, a plain number is MB) and durations (`48h`, `30m`). */
export interface GcConfigInput {
  enabled?: boolean | string;
  keepStorage?: string | number;
  keepDuration?: string | number;
  reservedSpace?: string | number;
  minFreeSpace?: string | number;
  grace?: string | number;
  interval?: string | number;
}

/** What a file, the environment or the flags may set (all optional, later layers win). */
export interface WorkerConfigInput {
  natsUrl?: string;
  /** `user`, `password`, `token`, `nkeySeedFile`, `credsFile`, `tlsCa`, `tlsCert`, `tlsKey`. */
  nats?: NatsAuth;
  id?: string;
  stateDir?: string;
  store?: {
    type?: 'fs' | 's3';
    dir?: string;
    endpoint?: string;
    bucket?: string;
    accessKey?: string;
    secretKey?: string;
    prefix?: string;
    region?: string;
    /** ms; see S3BlobStoreOptions.touchRefreshMs. */
    touchRefreshMs?: number;
  };
  /** Explicit platforms: `linux/amd64`, `linux/arm64=emulated`. Replaces detection. */
  platforms?: string[];
  /** Platforms to add as emulated to the detected native one (needs their qemu binfmt). */
  emulate?: string[];
  slots?: number;
  labels?: Record<string, string>;
  localDirs?: Record<string, string>;
  heartbeatMs?: number;
  drainTimeoutMs?: number;
  writeBehindIdleMs?: number;
  cacheMountLeaseMs?: number;
  cacheMountWaitMs?: number;
  logLevel?: string;
  healthListen?: string;
  metricsListen?: string;
  snapshotter?: string;
  runtime?: string;
  insecureRegistries?: string[];
  farmRegistryCredentials?: boolean | string;
  gc?: GcConfigInput;
  limits?: LimitsConfigInput;
  sandboxDeny?: string[];
  usernsRemap?: string;
}

export interface LoadConfigOptions {
  argv?: readonly string[];
  env?: Readonly<Record<string, string | undefined>>;
  /** For tests: the CPU architecture (`process.arch` names) and the binfmt_misc dir. */
  arch?: string;
  binfmtDir?: string;
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Loads and validates the configuration. Throws WorkerConfigError. */
export function loadConfig(o: LoadConfigOptions = {}): WorkerConfig {
  const env = o.env ?? {};
  const flags = fromFlags(o.argv ?? []);
  const file = flags.configFile ?? env.KILN_WORKER_CONFIG;
  const layers = [defaults(env), file ? fromFile(file) : {}, fromEnv(env), flags.input];
  return compile(layers.reduce(merge, {}), o);
}

/**
 * Tasks a worker runs at once by default. Most build steps are latency-bound (a container start, a
 * small copy), not CPU-bound, and BuildKit runs every ready vertex at once: one slot per CPU left
 * a wide build waiting on starts. The bound keeps a very wide graph from starting hundreds of
 * containers. Measured with `npm run bench -- peers` (8 parallel stages).
 */
export function defaultSlots(cpus: number = availableParallelism()): number {
  return Math.max(16, 4 * cpus);
}

function defaults(env: Readonly<Record<string, string | undefined>>): WorkerConfigInput {
  // Root: the system's data dir; anyone else: the user's (XDG). A rootless worker is root of its
  // user namespace, and still the user who started it.
  const data =
    process.getuid?.() === 0 && env[USERNS_ENV] !== 'rootless'
      ? '/var/lib/kiln'
      : join(env.XDG_DATA_HOME || join(env.HOME || homedir(), '.local/share'), 'kiln');
  return {
    natsUrl: 'nats://127.0.0.1:4222',
    stateDir: join(data, 'worker'),
    store: { type: 'fs', dir: join(data, 'store') },
    slots: defaultSlots(),
    heartbeatMs: 1_000,
    drainTimeoutMs: 60_000,
    writeBehindIdleMs: 1_000,
    cacheMountLeaseMs: 30_000,
    cacheMountWaitMs: 60_000,
    logLevel: 'info',
    snapshotter: 'auto',
    runtime: 'auto',
  };
}

function merge(a: WorkerConfigInput, b: WorkerConfigInput): WorkerConfigInput {
  const out: WorkerConfigInput = { ...a };
  for (const [k, v] of Object.entries(b) as [keyof WorkerConfigInput, unknown][]) {
    if (v === undefined) continue;
    if (k === 'nats') {
      // A file's TLS files and the environment's password make one setting.
      out.nats = { ...a.nats, ...(v as NatsAuth) };
    } else if (k === 'store') {
      const s = Object.fromEntries(
        Object.entries(v as object).filter(([, x]) => x !== undefined),
      ) as NonNullable<WorkerConfigInput['store']>;
      // Same backend: fields merge (a file's bucket, the environment's credentials); another
      // backend replaces the store whole.
      const sameType = s.type === undefined || s.type === a.store?.type;
      out.store = sameType ? { ...a.store, ...s } : s;
    } else if (k === 'gc' || k === 'limits') {
      const g = Object.fromEntries(Object.entries(v as object).filter(([, x]) => x !== undefined));
      (out as Record<string, unknown>)[k] = { ...a[k], ...g };
    } else (out as Record<string, unknown>)[k] = v;
  }
  return out;
}

function fromFile(path: string): WorkerConfigInput {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new WorkerConfigError(`config file ${path}: ${(err as Error).message}`, err);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new WorkerConfigError(`config file ${path}: not a JSON object`);
  return v;
}

function list(s: string | undefined): string[] | undefined {
  if (s === undefined) return undefined;
  return s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);
}

function pairs(
  items: readonly string[] | undefined,
  what: string,
): Record<string, string> | undefined {
  if (items === undefined) return undefined;
  const out: Record<string, string> = {};
  for (const it of items) {
    const i = it.indexOf('=');
    if (i <= 0) throw new WorkerConfigError(`${what} "${it}": expected name=value`);
    out[it.slice(0, i)] = it.slice(i + 1);
  }
  return out;
}

function int(s: string | undefined, what: string): number | undefined {
  if (s === undefined || s === '') return undefined;
  const n = Number(s);
  if (!Number.isInteger(n)) throw new WorkerConfigError(`${what}: "${s}" is not an integer`);
  return n;
}

function fromEnv(env: Readonly<Record<string, string | undefined>>): WorkerConfigInput {
  const e = (k: string): string | undefined => env[k] || undefined;
  let store: WorkerConfigInput['store'];
  const s3 = [
    'ENDPOINT',
    'BUCKET',
    'ACCESS_KEY',
    'SECRET_KEY',
    'PREFIX',
    'REGION',
    'TOUCH_REFRESH_MS',
  ];
  if (s3.some((k) => e(`KILN_S3_${k}`))) {
    // Only an endpoint or a bucket selects S3; credentials alone complete a file's S3 store.
    store = {
      ...(e('KILN_S3_ENDPOINT') || e('KILN_S3_BUCKET') ? { type: 's3' as const } : {}),
      endpoint: e('KILN_S3_ENDPOINT'),
      bucket: e('KILN_S3_BUCKET'),
      accessKey: e('KILN_S3_ACCESS_KEY'),
      secretKey: e('KILN_S3_SECRET_KEY'),
      prefix: e('KILN_S3_PREFIX'),
      region: e('KILN_S3_REGION'),
      touchRefreshMs: int(e('KILN_S3_TOUCH_REFRESH_MS'), 'KILN_S3_TOUCH_REFRESH_MS'),
    };
  } else if (e('KILN_STORE_DIR')) store = { type: 'fs', dir: e('KILN_STORE_DIR') };
  const nats = natsAuthFrom({}, env);
  return {
    natsUrl: e('KILN_NATS_URL'),
    ...(Object.keys(nats).length > 0 ? { nats } : {}),
    id: e('KILN_WORKER_ID'),
    stateDir: e('KILN_WORKER_STATE_DIR'),
    store,
    platforms: list(e('KILN_WORKER_PLATFORMS')),
    emulate: list(e('KILN_WORKER_EMULATE')),
    slots: int(e('KILN_WORKER_SLOTS'), 'KILN_WORKER_SLOTS'),
    labels: pairs(list(e('KILN_WORKER_LABELS')), 'KILN_WORKER_LABELS'),
    localDirs: pairs(list(e('KILN_WORKER_LOCAL_DIRS')), 'KILN_WORKER_LOCAL_DIRS'),
    heartbeatMs: int(e('KILN_WORKER_HEARTBEAT_MS'), 'KILN_WORKER_HEARTBEAT_MS'),
    drainTimeoutMs: int(e('KILN_WORKER_DRAIN_TIMEOUT_MS'), 'KILN_WORKER_DRAIN_TIMEOUT_MS'),
    writeBehindIdleMs: int(
      e('KILN_WORKER_WRITE_BEHIND_IDLE_MS'),
      'KILN_WORKER_WRITE_BEHIND_IDLE_MS',
    ),
    cacheMountLeaseMs: int(
      e('KILN_WORKER_CACHE_MOUNT_LEASE_MS'),
      'KILN_WORKER_CACHE_MOUNT_LEASE_MS',
    ),
    cacheMountWaitMs: int(e('KILN_WORKER_CACHE_MOUNT_WAIT_MS'), 'KILN_WORKER_CACHE_MOUNT_WAIT_MS'),
    logLevel: e('KILN_LOG_LEVEL'),
    healthListen: e('KILN_HEALTH_LISTEN'),
    metricsListen: e('KILN_METRICS_LISTEN'),
    snapshotter: e('KILN_WORKER_SNAPSHOTTER'),
    runtime: e('KILN_WORKER_RUNTIME'),
    insecureRegistries: list(e('KILN_INSECURE_REGISTRIES')),
    limits: {
      memory: e('KILN_WORKER_MEMORY_LIMIT'),
      pids: e('KILN_WORKER_PIDS_LIMIT'),
      cpuShares: e('KILN_WORKER_CPU_SHARES'),
      time: e('KILN_WORKER_TIME_LIMIT'),
      unpackSize: e('KILN_WORKER_UNPACK_MAX_SIZE'),
      unpackFiles: e('KILN_WORKER_UNPACK_MAX_FILES'),
    },
    sandboxDeny: list(e('KILN_WORKER_SANDBOX_DENY')),
    usernsRemap: e('KILN_WORKER_USERNS_REMAP'),
    farmRegistryCredentials: e('KILN_FARM_REGISTRY_CREDENTIALS'),
    gc: {
      enabled: e('KILN_WORKER_GC'),
      keepStorage: e('KILN_WORKER_GC_KEEP_STORAGE'),
      keepDuration: e('KILN_WORKER_GC_KEEP_DURATION'),
      reservedSpace: e('KILN_WORKER_GC_RESERVED_SPACE'),
      minFreeSpace: e('KILN_WORKER_GC_MIN_FREE_SPACE'),
      grace: e('KILN_WORKER_GC_GRACE'),
      interval: e('KILN_WORKER_GC_INTERVAL'),
    },
  };
}

/** `--help` text (also the reference of the flags). */
export const FLAGS_HELP = `kiln worker: runs LLB ops as tasks from the NATS task bus

  --config FILE            JSON config file (KILN_WORKER_CONFIG)
  --nats URL               NATS server (KILN_NATS_URL)
  --id ID                  worker id (KILN_WORKER_ID)
  --state-dir DIR          snapshots, runtime state, layer cache (KILN_WORKER_STATE_DIR)
  --store-dir DIR          shared filesystem content store (KILN_STORE_DIR)
  --s3-endpoint URL        S3 content store (KILN_S3_ENDPOINT), with --s3-bucket,
                           --s3-access-key, --s3-secret-key, --s3-prefix, --s3-region
  --platform P[=emulated]  explicit platform, repeatable (KILN_WORKER_PLATFORMS, comma list)
  --emulate P              add an emulated platform to the native one (KILN_WORKER_EMULATE)
  --slots N                tasks run at once (KILN_WORKER_SLOTS; default max(16, 4 x CPUs))
  --label K=V              repeatable (KILN_WORKER_LABELS, comma list)
  --local NAME=DIR         serve local://NAME from DIR, repeatable (KILN_WORKER_LOCAL_DIRS)
  --heartbeat-ms N, --drain-timeout-ms N, --log-level L (KILN_LOG_LEVEL),
  --health-listen H:P      HTTP /healthz and /readyz (KILN_HEALTH_LISTEN; default none)
  --metrics-listen H:P     HTTP /metrics, Prometheus text (KILN_METRICS_LISTEN; default none)
  --write-behind-idle-ms N idle time before held results are uploaded in the background
                           (KILN_WORKER_WRITE_BEHIND_IDLE_MS, default 1000)
  --cache-mount-lease-ms N a cache mount lock's lease (KILN_WORKER_CACHE_MOUNT_LEASE_MS, 30000)
  --cache-mount-wait-ms N  wait for another worker's cache mount upload
                           (KILN_WORKER_CACHE_MOUNT_WAIT_MS, default 60000)
  --snapshotter auto|overlayfs|native, --runtime auto|crun|runc,
  --insecure-registry HOST[:PORT] (KILN_INSECURE_REGISTRIES)
  --farm-registry-credentials   pulls and pushes may use this worker's docker config
                                (KILN_FARM_REGISTRY_CREDENTIALS=1; default: the client's only)
  --gc on|off              garbage collection of the local cache (KILN_WORKER_GC, default on)
  --gc-keep-storage SIZE   keep the cache under this (KILN_WORKER_GC_KEEP_STORAGE; 2GB, 512MB,
                           a plain number is MB; default 10% of the state dir's filesystem)
  --gc-keep-duration DUR   when idle, remove what was unused this long (KILN_WORKER_GC_KEEP_DURATION,
                           default 60d; 0 never)
  --gc-reserved-space SIZE never prune the cache below this (KILN_WORKER_GC_RESERVED_SPACE, 0)
  --gc-min-free-space SIZE prune when the filesystem has less free (KILN_WORKER_GC_MIN_FREE_SPACE, 0)
  --gc-grace DUR           never remove what was made or used this recently (KILN_WORKER_GC_GRACE, 5m)
  --gc-interval DUR        how often the background GC looks (KILN_WORKER_GC_INTERVAL, 1m)
  --memory-limit SIZE      memory of each task's container, OOM-killed past it
                           (KILN_WORKER_MEMORY_LIMIT; 2GB, 512MiB; default and 0: none)
  --pids-limit N           processes and threads of each task (KILN_WORKER_PIDS_LIMIT, 4096; 0 none)
  --cpu-shares N           CPU weight of each task, 1024 is normal (KILN_WORKER_CPU_SHARES)
  --time-limit DUR         wall time of each RUN (KILN_WORKER_TIME_LIMIT; 30m, 2h; default none)
  --unpack-max-size SIZE   bytes one archive ADD unpacks, or one layer applied, may hold
                           (KILN_WORKER_UNPACK_MAX_SIZE, 16GB; 0 none)
  --unpack-max-files N     entries of one archive or layer (KILN_WORKER_UNPACK_MAX_FILES,
                           1000000; 0 none)
  --sandbox-deny ADDR      an IP, CIDR or host a RUN may not reach (the farm's control plane),
                           repeatable (KILN_WORKER_SANDBOX_DENY, comma list); the NATS host and
                           the worker's own addresses are always denied
  --userns-remap USER      (root) run builds in a user namespace of USER's subordinate ids
                           (/etc/subuid, /etc/subgid) (KILN_WORKER_USERNS_REMAP); a worker
                           started by another user than root always runs rootless

${NATS_AUTH_HELP}`;

function fromFlags(argv: readonly string[]): {
  configFile?: string;
  input: WorkerConfigInput;
  help?: boolean;
} {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        config: { type: 'string' },
        nats: { type: 'string' },
        ...NATS_AUTH_FLAGS,
        id: { type: 'string' },
        'state-dir': { type: 'string' },
        'store-dir': { type: 'string' },
        's3-endpoint': { type: 'string' },
        's3-bucket': { type: 'string' },
        's3-access-key': { type: 'string' },
        's3-secret-key': { type: 'string' },
        's3-prefix': { type: 'string' },
        's3-region': { type: 'string' },
        platform: { type: 'string', multiple: true },
        emulate: { type: 'string', multiple: true },
        slots: { type: 'string' },
        label: { type: 'string', multiple: true },
        local: { type: 'string', multiple: true },
        'heartbeat-ms': { type: 'string' },
        'drain-timeout-ms': { type: 'string' },
        'write-behind-idle-ms': { type: 'string' },
        'cache-mount-lease-ms': { type: 'string' },
        'cache-mount-wait-ms': { type: 'string' },
        'log-level': { type: 'string' },
        'health-listen': { type: 'string' },
        'metrics-listen': { type: 'string' },
        snapshotter: { type: 'string' },
        runtime: { type: 'string' },
        'insecure-registry': { type: 'string', multiple: true },
        'farm-registry-credentials': { type: 'boolean' },
        gc: { type: 'string' },
        'gc-keep-storage': { type: 'string' },
        'gc-keep-duration': { type: 'string' },
        'gc-reserved-space': { type: 'string' },
        'gc-min-free-space': { type: 'string' },
        'gc-grace': { type: 'string' },
        'gc-interval': { type: 'string' },
        'memory-limit': { type: 'string' },
        'pids-limit': { type: 'string' },
        'cpu-shares': { type: 'string' },
        'time-limit': { type: 'string' },
        'unpack-max-size': { type: 'string' },
        'unpack-max-files': { type: 'string' },
        'sandbox-deny': { type: 'string', multiple: true },
        'userns-remap': { type: 'string' },
      },
    }));
  } catch (err) {
    throw new WorkerConfigError(`${(err as Error).message}\n${FLAGS_HELP}`, err);
  }
  let store: WorkerConfigInput['store'];
  if (values['s3-endpoint'] || values['s3-bucket']) {
    store = {
      type: 's3',
      endpoint: values['s3-endpoint'],
      bucket: values['s3-bucket'],
      accessKey: values['s3-access-key'],
      secretKey: values['s3-secret-key'],
      prefix: values['s3-prefix'],
      region: values['s3-region'],
    };
  } else if (values['store-dir']) store = { type: 'fs', dir: values['store-dir'] };
  const nats = natsAuthFrom(values, {});
  return {
    configFile: values.config,
    input: {
      natsUrl: values.nats,
      ...(Object.keys(nats).length > 0 ? { nats } : {}),
      id: values.id,
      stateDir: values['state-dir'],
      store,
      platforms: values.platform,
      emulate: values.emulate,
      slots: int(values.slots, '--slots'),
      labels: pairs(values.label, '--label'),
      localDirs: pairs(values.local, '--local'),
      heartbeatMs: int(values['heartbeat-ms'], '--heartbeat-ms'),
      drainTimeoutMs: int(values['drain-timeout-ms'], '--drain-timeout-ms'),
      writeBehindIdleMs: int(values['write-behind-idle-ms'], '--write-behind-idle-ms'),
      cacheMountLeaseMs: int(values['cache-mount-lease-ms'], '--cache-mount-lease-ms'),
      cacheMountWaitMs: int(values['cache-mount-wait-ms'], '--cache-mount-wait-ms'),
      logLevel: values['log-level'],
      healthListen: values['health-listen'],
      metricsListen: values['metrics-listen'],
      snapshotter: values.snapshotter,
      runtime: values.runtime,
      insecureRegistries: values['insecure-registry'],
      limits: {
        memory: values['memory-limit'],
        pids: values['pids-limit'],
        cpuShares: values['cpu-shares'],
        time: values['time-limit'],
        unpackSize: values['unpack-max-size'],
        unpackFiles: values['unpack-max-files'],
      },
      sandboxDeny: values['sandbox-deny'],
      usernsRemap: values['userns-remap'],
      farmRegistryCredentials: values['farm-registry-credentials'],
      gc: {
        enabled: values.gc,
        keepStorage: values['gc-keep-storage'],
        keepDuration: values['gc-keep-duration'],
        reservedSpace: values['gc-reserved-space'],
        minFreeSpace: values['gc-min-free-space'],
        grace: values['gc-grace'],
        interval: values['gc-interval'],
      },
    },
  };
}

function compileGc(g: GcConfigInput): WorkerConfig['gc'] {
  const quantity = (v: string | number | undefined, what: string, parse: (s: string) => number) => {
    if (v === undefined || v === '') return undefined;
    try {
      return parse(String(v));
    } catch (err) {
      if (err instanceof InvalidQuantityError)
        throw new WorkerConfigError(`gc ${what}: ${err.message}`, err);
      throw err;
    }
  };
  const size = (v: string | number | undefined, what: string) => quantity(v, what, parseSize);
  const duration = (v: string | number | undefined, what: string) =>
    quantity(v, what, parseDuration);
  const on = g.enabled ?? true;
  const enabled = flag(on);
  if (
    typeof on === 'string' &&
    !['on', 'off', 'true', 'false', '1', '0'].includes(on.toLowerCase())
  )
    throw new WorkerConfigError(`gc must be on or off (got ${on})`);
  const keepBytes = size(g.keepStorage, 'keepStorage');
  const interval = duration(g.interval, 'interval') ?? DEFAULT_GC_INTERVAL_MS;
  if (interval <= 0) throw new WorkerConfigError('gc interval must be positive');
  return {
    enabled,
    ...(keepBytes !== undefined ? { keepBytes } : {}),
    keepDurationMs: duration(g.keepDuration, 'keepDuration') ?? DEFAULT_GC_KEEP_DURATION_MS,
    reservedBytes: size(g.reservedSpace, 'reservedSpace') ?? 0,
    minFreeBytes: size(g.minFreeSpace, 'minFreeSpace') ?? 0,
    graceMs: duration(g.grace, 'grace') ?? DEFAULT_GC_GRACE_MS,
    intervalMs: interval,
  };
}

/** A limit as written: 0 or empty is none; a typed error for anything else not 0 or more. */
function limitQuantity(
  v: string | number | undefined,
  what: string,
  parse: (s: string) => number,
): number | undefined {
  if (v === undefined || v === '') return undefined;
  let n: number;
  try {
    n = parse(String(v));
  } catch (err) {
    if (err instanceof InvalidQuantityError)
      throw new WorkerConfigError(`limits ${what}: ${err.message}`, err);
    throw err;
  }
  if (!Number.isFinite(n) || n < 0)
    throw new WorkerConfigError(`limits ${what} must be 0 or more (got ${String(v)})`);
  return n === 0 ? undefined : n;
}

function count(s: string): number {
  const n = Number(s);
  if (!Number.isInteger(n)) throw new InvalidQuantityError(`"${s}" is not an integer`);
  return n;
}

function compileUnpack(l: LimitsConfigInput): TarLimits {
  const maxBytes =
    l.unpackSize === undefined
      ? DEFAULT_UNPACK_MAX_BYTES
      : limitQuantity(l.unpackSize, 'unpackSize', parseSize);
  const maxEntries = limitQuantity(l.unpackFiles ?? DEFAULT_UNPACK_MAX_FILES, 'unpackFiles', count);
  return {
    ...(maxBytes !== undefined ? { maxBytes: Math.floor(maxBytes) } : {}),
    ...(maxEntries !== undefined ? { maxEntries } : {}),
  };
}

/**
 * `noCgroups`: a rootless worker (no cgroup delegated to it) has no default pids limit, as it
 * could not apply one; a limit set explicitly still fails its first RUN, saying why.
 */
function compileLimits(l: LimitsConfigInput, noCgroups = false): TaskLimits {
  const quantity = limitQuantity;
  const out: TaskLimits = {};
  const memory = quantity(l.memory, 'memory', parseSize);
  if (memory !== undefined) out.memoryBytes = Math.floor(memory);
  const pids = quantity(l.pids ?? (noCgroups ? 0 : DEFAULT_PIDS_LIMIT), 'pids', count);
  if (pids !== undefined) out.pids = pids;
  const shares = quantity(l.cpuShares, 'cpuShares', count);
  if (shares !== undefined) {
    if (shares < 2 || shares > 262144)
      throw new WorkerConfigError(`limits cpuShares must be 2..262144 (got ${shares})`);
    out.cpuShares = shares;
  }
  const time = quantity(l.time, 'time', parseDuration);
  if (time !== undefined) out.timeMs = time;
  return out;
}

function oneOf<T extends string>(v: string | undefined, allowed: readonly T[], what: string): T {
  if (v === undefined || !(allowed as readonly string[]).includes(v))
    throw new WorkerConfigError(`${what} must be one of ${allowed.join(', ')} (got ${String(v)})`);
  return v as T;
}

function hostPort(v: string, what: string): string {
  if (!/^(\[[^\]]*\]|[^:]*):\d+$/.test(v))
    throw new WorkerConfigError(`${what} must be host:port (got ${v})`);
  return v;
}

function positive(v: number | undefined, what: string): number {
  if (v === undefined || !Number.isInteger(v) || v <= 0)
    throw new WorkerConfigError(`${what} must be a positive integer (got ${String(v)})`);
  return v;
}

function compile(c: WorkerConfigInput, o: LoadConfigOptions): WorkerConfig {
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(p));
  const s = c.store ?? {};
  let store: StoreConfig;
  if (s.type === 's3') {
    const missing = (['endpoint', 'bucket', 'accessKey', 'secretKey'] as const).filter(
      (k) => !s[k],
    );
    if (missing.length > 0) throw new WorkerConfigError(`the S3 store needs ${missing.join(', ')}`);
    if (s.touchRefreshMs !== undefined && s.touchRefreshMs < 0)
      throw new WorkerConfigError(`the S3 touch refresh must be >= 0 ms (got ${s.touchRefreshMs})`);
    store = {
      type: 's3',
      endpoint: s.endpoint!,
      bucket: s.bucket!,
      accessKey: s.accessKey!,
      secretKey: s.secretKey!,
      ...(s.prefix ? { prefix: s.prefix } : {}),
      ...(s.region ? { region: s.region } : {}),
      ...(s.touchRefreshMs !== undefined ? { touchRefreshMs: s.touchRefreshMs } : {}),
    };
  } else {
    if (!s.dir) throw new WorkerConfigError('the filesystem store needs a directory');
    store = { type: 'fs', dir: abs(s.dir) };
  }
  if (!c.natsUrl) throw new WorkerConfigError('a NATS url is required');
  const env = o.env ?? {};
  const marker = env[USERNS_ENV];
  const userNamespace = marker === 'rootless' || marker === 'remap' ? marker : undefined;
  const cgroupRoot = env[CGROUP_ROOT_ENV] || undefined;
  if (!c.stateDir) throw new WorkerConfigError('a state dir is required');
  const localDirs: Record<string, string> = {};
  for (const [k, v] of Object.entries(c.localDirs ?? {})) localDirs[k] = abs(v);
  let natsAuth: NatsAuth;
  try {
    natsAuth = checkNatsAuth(c.nats ?? {});
  } catch (err) {
    if (err instanceof NatsConfigError) throw new WorkerConfigError(err.message, err);
    throw err;
  }
  return {
    natsUrl: c.natsUrl,
    natsAuth,
    ...(c.id ? { id: c.id } : {}),
    stateDir: abs(c.stateDir),
    store,
    platforms: resolvePlatforms({
      ...(c.platforms ? { explicit: c.platforms } : {}),
      ...(c.emulate ? { emulate: c.emulate } : {}),
      ...(o.arch ? { arch: o.arch } : {}),
      ...(o.binfmtDir ? { binfmtDir: o.binfmtDir } : {}),
    }),
    slots: positive(c.slots, 'slots'),
    labels: { ...c.labels },
    localDirs,
    heartbeatMs: positive(c.heartbeatMs, 'heartbeatMs'),
    drainTimeoutMs: positive(c.drainTimeoutMs, 'drainTimeoutMs'),
    writeBehindIdleMs: positive(c.writeBehindIdleMs, 'writeBehindIdleMs'),
    cacheMountLeaseMs: positive(c.cacheMountLeaseMs, 'cacheMountLeaseMs'),
    cacheMountWaitMs: positive(c.cacheMountWaitMs, 'cacheMountWaitMs'),
    logLevel: oneOf(c.logLevel, LOG_LEVELS, 'logLevel'),
    ...(c.healthListen ? { healthListen: hostPort(c.healthListen, 'healthListen') } : {}),
    ...(c.metricsListen ? { metricsListen: hostPort(c.metricsListen, 'metricsListen') } : {}),
    snapshotter: oneOf(c.snapshotter, ['auto', 'overlayfs', 'native'] as const, 'snapshotter'),
    runtime: oneOf(c.runtime, ['auto', 'crun', 'runc'] as const, 'runtime'),
    insecureRegistries: [...(c.insecureRegistries ?? [])],
    farmRegistryCredentials: flag(c.farmRegistryCredentials),
    gc: compileGc(c.gc ?? {}),
    limits: compileLimits(c.limits ?? {}, userNamespace === 'rootless' && !cgroupRoot),
    sandboxDeny: [...(c.sandboxDeny ?? [])],
    unpack: compileUnpack(c.limits ?? {}),
    ...(c.usernsRemap ? { usernsRemap: c.usernsRemap } : {}),
    ...(userNamespace ? { userNamespace } : {}),
    ...(cgroupRoot ? { cgroupRoot } : {}),
  };
}
