/**
 * The scheduler service's configuration: defaults < `KILN_*` environment < command-line flags,
 * validated once into a {@link SchedulerConfig}. The environment is read only by the caller
 * (main.ts) and passed in, so tests inject their own.
 */
import { parseArgs } from 'node:util';
import { parseDuration } from '@kiln/common';
import { parseTenantLimits } from './control/tenant-limits.js';
import type { TenantLimits } from './control/tenant-limits.js';
import { DEFAULT_FRONTEND_LIMITS, frontendLimits } from '@kiln/dockerfile';
import type { FrontendLimits } from '@kiln/dockerfile';
import { isEntitlement } from '@kiln/llb';
import type { Entitlement } from '@kiln/llb';
import { NATS_AUTH_FLAGS, NatsConfigError, checkNatsAuth, natsAuthFrom } from '@kiln/bus';
import type { NatsAuth } from '@kiln/bus';
import { KilnError, parsePlatform } from '@kiln/protocol';
import { storeConfigFromEnv } from '@kiln/store';
import type { StoreConfig } from '@kiln/store';

export interface SchedulerConfig {
  /** `host:port` of the HTTP `/metrics` (and `/healthz`, `/readyz`) listener; absent: none. */
  metricsListen?: string;
  /**
   * gRPC listen address `host:port` or `unix:/path` (`--listen`, `KILN_SCHEDULER_LISTEN`).
   * Default loopback; any other address needs TLS and authentication, or `insecureListen`.
   */
  listen: string;
  /** TLS: the server's certificate and key, PEM files (`--tlscert`, `--tlskey`, `KILN_TLS_CERT`, `KILN_TLS_KEY`). */
  tlsCert?: string;
  tlsKey?: string;
  /**
   * Mutual TLS: CA bundle client certificates must chain to; a certificate's CN names its
   * tenant (`--tlscacert`, `KILN_TLS_CACERT`).
   */
  tlsCaCert?: string;
  /** Bearer tokens and their tenants, a file (`--tokens-file`, `KILN_TOKENS_FILE`; auth.ts). */
  tokensFile?: string;
  /** Bearer tokens inline, same format (`KILN_TOKENS`); prefer the file. */
  tokens?: string;
  /** Serve a non-loopback address without TLS and authentication (`--insecure-listen`, `KILN_INSECURE_LISTEN=1`). */
  insecureListen: boolean;
  /**
   * Entitlements every tenant may ask for (`--allow-insecure-entitlement`, repeatable;
   * `KILN_ALLOW_INSECURE_ENTITLEMENTS`, comma-separated).
   */
  allowEntitlements: Entitlement[];
  /** Tenants share cache keys and cache mounts (`--shared-cache`, `KILN_SHARED_CACHE=1`). */
  sharedCache: boolean;
  /**
   * Tenants that may run `kiln du` and `kiln prune` (DiskUsage, Prune: every tenant's cache)
   * (`--admin-tenant`, repeatable; `KILN_ADMIN_TENANTS`, comma-separated). Without authentication
   * the one caller may.
   */
  adminTenants: string[];
  /**
   * Builds may use this service's own registry credentials (its docker config) when the client
   * offers none (`--farm-registry-credentials`, `KILN_FARM_REGISTRY_CREDENTIALS=1`). Default: a
   * build resolves images only with its client's credentials (through its session) or anonymously.
   */
  farmRegistryCredentials: boolean;
  /** NATS server URL(s), comma-separated (`--nats`, `KILN_NATS_URL`). */
  natsUrl: string;
  /**
   * NATS credentials and TLS: `--nats-user`/`--nats-password` (`KILN_NATS_USER`,
   * `KILN_NATS_PASSWORD`), `--nats-token` (`KILN_NATS_TOKEN`), `--nats-nkey FILE`
   * (`KILN_NATS_NKEY`), `--nats-creds FILE` (`KILN_NATS_CREDS`), `--nats-tlscacert`,
   * `--nats-tlscert`, `--nats-tlskey` (`KILN_NATS_TLS_CA`, `KILN_NATS_TLS_CERT`, `KILN_NATS_TLS_KEY`).
   */
  natsAuth: NatsAuth;
  /** Platform of ops that name none (`--platform`, `KILN_DEFAULT_PLATFORM`). */
  defaultPlatform: string;
  /** pino level (`--log-level`, `KILN_LOG_LEVEL`). */
  logLevel: string;
  /** Dispatcher: holder's head start on a task (`KILN_AFFINITY_DELAY_MS`). */
  affinityDelayMs: number;
  /** Dispatcher: a worker unheard of this long is presumed dead (`KILN_HEARTBEAT_TIMEOUT_MS`). */
  heartbeatTimeoutMs: number;
  /** Dispatcher: attempts per task (`KILN_MAX_ATTEMPTS`). */
  maxAttempts: number;
  /**
   * How long a cache record (a step's result in the index) lives after its last change
   * (`--cache-ttl`, `KILN_CACHE_TTL`: a duration such as `7d`); applied to the bucket at start.
   */
  cacheTtlMs: number;
  /**
   * How long a content checksum from an input's holder may take before the key falls back to the
   * input's result id; 0 turns selector content keys off (`KILN_CHECKSUM_TIMEOUT_MS`).
   */
  checksumTimeoutMs: number;
  /**
   * Registries read over plain HTTP by the base image resolver, `host:port` (loopback hosts
   * always are) (`--insecure-registries`, `KILN_INSECURE_REGISTRIES`, comma-separated).
   */
  insecureRegistries: string[];
  /**
   * The farm's content store, the one its workers use: a directory (`--store-dir`,
   * `KILN_STORE_DIR`) or an S3 bucket (`KILN_S3_ENDPOINT`, `KILN_S3_BUCKET`, `KILN_S3_ACCESS_KEY`,
   * `KILN_S3_SECRET_KEY`, optional `KILN_S3_PREFIX`, `KILN_S3_REGION`). Without one, builds can
   * use neither local directories nor exporters.
   */
  store?: StoreConfig;
  /**
   * Bounds on the Dockerfile frontend's work per Dockerfile, and on a Solve's Definition
   * (`maxDefinitionBytes`), over the defaults of @kiln/dockerfile's FrontendLimits
   * (`--frontend-limits`, `KILN_FRONTEND_LIMITS`: `maxWordLength=4194304,maxMillis=120000`).
   */
  frontendLimits: Partial<FrontendLimits>;
  /**
   * Each tenant's RUN limits, carried in its tasks and capped by each worker's own
   * (`--tenant-limits TENANT:memory=2GiB,pids=512,cpuShares=512,time=30m`, repeatable;
   * `KILN_TENANT_LIMITS`, entries separated by `;`). Absent tenants get the workers' limits.
   */
  tenantLimits: Map<string, TenantLimits>;
}

export const DEFAULT_CONFIG: SchedulerConfig = {
  listen: '127.0.0.1:8470',
  natsUrl: 'nats://127.0.0.1:4222',
  natsAuth: {},
  defaultPlatform: 'linux/amd64',
  logLevel: 'info',
  affinityDelayMs: 100,
  heartbeatTimeoutMs: 3_000,
  maxAttempts: 3,
  cacheTtlMs: 24 * 3600_000,
  checksumTimeoutMs: 3_000,
  insecureRegistries: [],
  insecureListen: false,
  allowEntitlements: [],
  sharedCache: false,
  adminTenants: [],
  farmRegistryCredentials: false,
  frontendLimits: {},
  tenantLimits: new Map(),
};

/** Whether `listen` is reachable only from this machine: a unix socket or a loopback address. */
export function isLoopbackListen(listen: string): boolean {
  if (listen.startsWith('unix:')) return true;
  const host = listen.slice(0, listen.lastIndexOf(':')).replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export class ConfigInvalidError extends KilnError {
  constructor(message: string, key: string) {
    super('CONFIG_INVALID', message, { details: { key } });
  }
}

function int(key: string, v: string | undefined, fallback: number): number {
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0)
    throw new ConfigInvalidError(`${key} must be a non-negative integer, got ${v}`, key);
  return n;
}

function duration(key: string, v: string, fallback: number): number {
  if (v === '') return fallback;
  let ms: number;
  try {
    ms = parseDuration(v);
  } catch {
    throw new ConfigInvalidError(`--${key} must be a duration such as 90m or 7d, got ${v}`, key);
  }
  if (ms < 60_000) throw new ConfigInvalidError(`--${key} must be at least 1m, got ${v}`, key);
  return ms;
}

/** `key=value,...` over FrontendLimits' keys, checked as the frontend checks them. */
function parseFrontendLimits(v: string): Partial<FrontendLimits> {
  const out: Record<string, number> = {};
  for (const field of v.split(',').map((x) => x.trim())) {
    if (!field) continue;
    const [k = '', n = ''] = field.split('=', 2);
    out[k] = Number(n);
  }
  try {
    frontendLimits(out);
  } catch (err) {
    throw new ConfigInvalidError(
      `--frontend-limits: ${(err as Error).message} (keys: ${Object.keys(DEFAULT_FRONTEND_LIMITS).join(', ')})`,
      'frontendLimits',
    );
  }
  return out;
}

function natsAuth(
  flags: Readonly<Record<string, unknown>>,
  env: Readonly<Record<string, string | undefined>>,
): NatsAuth {
  try {
    return checkNatsAuth(natsAuthFrom(flags, env));
  } catch (err) {
    if (err instanceof NatsConfigError) throw new ConfigInvalidError(err.message, 'nats');
    throw err;
  }
}

export function loadConfig(
  env: Readonly<Record<string, string | undefined>>,
  argv: readonly string[],
): SchedulerConfig {
  let flags: Record<string, string | boolean | string[] | undefined>;
  try {
    flags = parseArgs({
      args: [...argv],
      options: {
        listen: { type: 'string' },
        nats: { type: 'string' },
        ...NATS_AUTH_FLAGS,
        platform: { type: 'string' },
        'log-level': { type: 'string' },
        'insecure-registries': { type: 'string' },
        'store-dir': { type: 'string' },
        tlscert: { type: 'string' },
        tlskey: { type: 'string' },
        tlscacert: { type: 'string' },
        'tokens-file': { type: 'string' },
        'insecure-listen': { type: 'boolean' },
        'allow-insecure-entitlement': { type: 'string', multiple: true },
        'shared-cache': { type: 'boolean' },
        'admin-tenant': { type: 'string', multiple: true },
        'cache-ttl': { type: 'string' },
        'farm-registry-credentials': { type: 'boolean' },
        'frontend-limits': { type: 'string' },
        'metrics-listen': { type: 'string' },
        'tenant-limits': { type: 'string', multiple: true },
      },
      strict: true,
    }).values;
  } catch (cause) {
    throw new ConfigInvalidError((cause as Error).message, 'argv');
  }
  const str = (flag: string, key: string, fallback: string): string => {
    const f = flags[flag];
    if (typeof f === 'string' && f !== '') return f;
    return env[key] || fallback;
  };
  const bool = (flag: string, key: string): boolean =>
    flags[flag] === true || ['1', 'true', 'yes'].includes((env[key] ?? '').toLowerCase());
  const entitlements = [
    ...((flags['allow-insecure-entitlement'] as string[] | undefined) ?? []),
    ...(env.KILN_ALLOW_INSECURE_ENTITLEMENTS ?? '').split(','),
  ]
    .map((x) => x.trim())
    .filter(Boolean);
  for (const e of entitlements)
    if (!isEntitlement(e))
      throw new ConfigInvalidError(
        `--allow-insecure-entitlement takes security.insecure or network.host, got ${e}`,
        'allowEntitlements',
      );
  const optional = (flag: string, key: string): string | undefined =>
    str(flag, key, '') || undefined;
  const c: SchedulerConfig = {
    listen: str('listen', 'KILN_SCHEDULER_LISTEN', DEFAULT_CONFIG.listen),
    ...defined({
      tlsCert: optional('tlscert', 'KILN_TLS_CERT'),
      tlsKey: optional('tlskey', 'KILN_TLS_KEY'),
      tlsCaCert: optional('tlscacert', 'KILN_TLS_CACERT'),
      tokensFile: optional('tokens-file', 'KILN_TOKENS_FILE'),
      tokens: env.KILN_TOKENS || undefined,
      metricsListen: optional('metrics-listen', 'KILN_METRICS_LISTEN'),
    }),
    insecureListen: bool('insecure-listen', 'KILN_INSECURE_LISTEN'),
    allowEntitlements: [...new Set(entitlements as Entitlement[])],
    sharedCache: bool('shared-cache', 'KILN_SHARED_CACHE'),
    adminTenants: [
      ...((flags['admin-tenant'] as string[] | undefined) ?? []),
      ...(env.KILN_ADMIN_TENANTS ?? '').split(','),
    ]
      .map((x) => x.trim())
      .filter(Boolean),
    farmRegistryCredentials: bool('farm-registry-credentials', 'KILN_FARM_REGISTRY_CREDENTIALS'),
    natsUrl: str('nats', 'KILN_NATS_URL', DEFAULT_CONFIG.natsUrl),
    natsAuth: natsAuth(flags, env),
    defaultPlatform: str('platform', 'KILN_DEFAULT_PLATFORM', DEFAULT_CONFIG.defaultPlatform),
    logLevel: str('log-level', 'KILN_LOG_LEVEL', DEFAULT_CONFIG.logLevel),
    affinityDelayMs: int(
      'KILN_AFFINITY_DELAY_MS',
      env.KILN_AFFINITY_DELAY_MS,
      DEFAULT_CONFIG.affinityDelayMs,
    ),
    heartbeatTimeoutMs: int(
      'KILN_HEARTBEAT_TIMEOUT_MS',
      env.KILN_HEARTBEAT_TIMEOUT_MS,
      DEFAULT_CONFIG.heartbeatTimeoutMs,
    ),
    maxAttempts: int('KILN_MAX_ATTEMPTS', env.KILN_MAX_ATTEMPTS, DEFAULT_CONFIG.maxAttempts),
    cacheTtlMs: duration(
      'cache-ttl',
      str('cache-ttl', 'KILN_CACHE_TTL', ''),
      DEFAULT_CONFIG.cacheTtlMs,
    ),
    checksumTimeoutMs: int(
      'KILN_CHECKSUM_TIMEOUT_MS',
      env.KILN_CHECKSUM_TIMEOUT_MS,
      DEFAULT_CONFIG.checksumTimeoutMs,
    ),
    insecureRegistries: str('insecure-registries', 'KILN_INSECURE_REGISTRIES', '')
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean),
    frontendLimits: parseFrontendLimits(str('frontend-limits', 'KILN_FRONTEND_LIMITS', '')),
    tenantLimits: parseTenantLimits([
      ...(env.KILN_TENANT_LIMITS ?? '').split(';'),
      ...((flags['tenant-limits'] as string[] | undefined) ?? []),
    ]),
  };
  const storeDir = str('store-dir', 'KILN_STORE_DIR', '');
  const store = storeConfigFromEnv(env, storeDir);
  if (store.missing)
    throw new ConfigInvalidError(`the S3 store needs ${store.missing.join(', ')}`, 'store');
  if (store.config) c.store = store.config;
  if (c.metricsListen && !/^(\[[^\]]*\]|[^:]*):\d+$/.test(c.metricsListen))
    throw new ConfigInvalidError(
      `metrics listen address must be host:port, got ${c.metricsListen}`,
      'metricsListen',
    );
  if (!/^[^:]*:\d+$/.test(c.listen) && !c.listen.startsWith('unix:'))
    throw new ConfigInvalidError(`listen address must be host:port, got ${c.listen}`, 'listen');
  try {
    parsePlatform(c.defaultPlatform);
  } catch {
    throw new ConfigInvalidError(
      `platform must be os/arch[/variant], got ${c.defaultPlatform}`,
      'platform',
    );
  }
  if (!c.tlsCert !== !c.tlsKey)
    throw new ConfigInvalidError('--tlscert and --tlskey go together', 'tls');
  if (c.tlsCaCert && !c.tlsCert)
    throw new ConfigInvalidError('--tlscacert (mutual TLS) needs --tlscert and --tlskey', 'tls');
  if (!isLoopbackListen(c.listen) && !c.insecureListen && !(c.tlsCert && authConfigured(c)))
    throw new ConfigInvalidError(
      `refusing to serve ${c.listen} without TLS and authentication: anyone reaching it could run ` +
        'any build on the workers. Configure --tlscert/--tlskey with --tokens-file or --tlscacert, ' +
        'listen on loopback, or pass --insecure-listen to accept the risk',
      'listen',
    );
  if (c.maxAttempts < 1)
    throw new ConfigInvalidError('KILN_MAX_ATTEMPTS must be >= 1', 'maxAttempts');
  return c;
}

/** Whether callers must authenticate: tokens or client certificates are configured. */
export function authConfigured(c: SchedulerConfig): boolean {
  return !!(c.tokensFile || c.tokens || c.tlsCaCert);
}

function defined<T extends Record<string, unknown>>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
