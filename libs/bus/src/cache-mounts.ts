/**
 * Cache mounts (`RUN --mount=type=cache`) shared by the workers of a farm: the state every worker
 * agrees on, in the KV bucket `kiln_cache_mounts` (history 1), which workers may write (and only
 * it: `nats-permissions.ts`). The content itself is a layer blob in the content store.
 *
 * The bucket's entries expire `recordTtlMs` (the scheduler's `--cache-ttl`) after their last
 * write, as task records do; the store's collector keeps the blob of every current version.
 *
 * A cache mount is (namespace, id): the build's cache namespace (its tenant's, '' when the farm
 * shares its cache) and the mount's id. It has instances (`0` for `shared` and `locked`; `private`
 * takes the first instance no one holds), each with two keys, named by `sha256(namespace \0 id)`:
 *
 * - `v.<hash>.<n>`: the current version ({@link CacheMountVersion}): a counter and the digest of
 *   the layer blob holding the whole directory; `pending` while a worker uploads a newer one.
 *   Changed only by compare-and-set.
 * - `l.<hash>.<n>`: the instance's lock ({@link CacheMountLock}) with a lease: its holder renews it
 *   (a new revision) every `leaseMs / 3`; a waiter that sees the same revision for `leaseMs` on its
 *   own clock takes it over (a dead worker does not hold a cache forever; no clocks are compared
 *   across machines).
 */
import { createHash, randomBytes } from 'node:crypto';
import type { KV } from '@nats-io/kv';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { KilnError } from '@kiln/protocol';

export const CACHE_MOUNTS_BUCKET = 'kiln_cache_mounts';

/** The current content of a cache mount instance. */
export interface CacheMountVersion {
  /** 0: nothing uploaded yet (only `pending`). Advances by one per upload. */
  version: number;
  /** The layer blob (gzip tar of the whole directory); '' at version 0. */
  digest: string;
  size: number;
  /** The worker that uploaded it. */
  worker: string;
  /** Set while a worker uploads the next version (readers wait for it, up to a bound). */
  pending?: { worker: string; token: string };
}

/** Who holds an instance's lock. */
export interface CacheMountLock {
  worker: string;
  token: string;
  sharing: 'locked' | 'private';
}

export class CacheMountStateError extends KilnError {
  constructor(message: string, details: Record<string, string> = {}) {
    super('CACHE_MOUNT_STATE', message, { details, retryable: true });
  }
}

/** The name of cache mount (namespace, id): the key part of its records. */
export function cacheMountName(namespace: string, id: string): string {
  return createHash('sha256').update(`${namespace}\0${id}`).digest('hex');
}

export const cacheMountVersionKey = (name: string, instance: number): string =>
  `v.${name}.${instance}`;
export const cacheMountLockKey = (name: string, instance: number): string =>
  `l.${name}.${instance}`;

/**
 * The cache mounts bucket, bound without a call (`openBus` makes it, with the records' lifetime;
 * a worker may not): reads and writes fail while it does not exist.
 */
export async function openCacheMountsBucket(nc: NatsConnection): Promise<KV> {
  return new Kvm(nc).open(CACHE_MOUNTS_BUCKET);
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export function decodeCacheMountVersion(data: Uint8Array): CacheMountVersion {
  let v: unknown;
  try {
    v = JSON.parse(dec.decode(data));
  } catch (err) {
    throw new CacheMountStateError('cache mount version is not JSON', { cause: String(err) });
  }
  const r = v as Partial<CacheMountVersion> | null;
  if (
    !r ||
    typeof r.version !== 'number' ||
    typeof r.digest !== 'string' ||
    typeof r.size !== 'number' ||
    typeof r.worker !== 'string' ||
    (r.digest !== '' && !/^sha256:[0-9a-f]{64}$/.test(r.digest))
  )
    throw new CacheMountStateError('malformed cache mount version');
  const out: CacheMountVersion = {
    version: r.version,
    digest: r.digest,
    size: r.size,
    worker: r.worker,
  };
  if (r.pending && typeof r.pending.worker === 'string' && typeof r.pending.token === 'string')
    out.pending = { worker: r.pending.worker, token: r.pending.token };
  return out;
}

export function encodeCacheMountJson(v: CacheMountVersion | CacheMountLock): Uint8Array {
  return enc.encode(JSON.stringify(v));
}

function isWrongSequence(err: unknown): boolean {
  // JetStreamApiError 10071 (wrong last sequence) and 10164 (unknown); the message says it too.
  const e = err as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === 'number' ? e.code : undefined;
  return (
    code === 10071 ||
    code === 10164 ||
    (typeof e?.message === 'string' && /wrong last sequence/i.test(e.message))
  );
}

/** The version record and its revision (0 when absent). */
export async function readCacheMountVersion(
  kv: KV,
  name: string,
  instance: number,
): Promise<{ value: CacheMountVersion | undefined; revision: number }> {
  const e = await kv.get(cacheMountVersionKey(name, instance));
  if (!e || e.operation !== 'PUT' || e.value.length === 0)
    return { value: undefined, revision: e?.revision ?? 0 };
  return { value: decodeCacheMountVersion(e.value), revision: e.revision };
}

/**
 * Changes the version record by compare-and-set, retrying on conflict: `change` gets the current
 * value (undefined when none) and returns the new one, or undefined to leave it as it is.
 */
export async function casCacheMountVersion(
  kv: KV,
  name: string,
  instance: number,
  change: (cur: CacheMountVersion | undefined) => CacheMountVersion | undefined,
): Promise<CacheMountVersion | undefined> {
  const key = cacheMountVersionKey(name, instance);
  for (let i = 0; i < 100; i++) {
    const { value, revision } = await readCacheMountVersion(kv, name, instance);
    const next = change(value);
    if (next === undefined) return value;
    try {
      if (revision === 0) await kv.create(key, encodeCacheMountJson(next));
      else await kv.update(key, encodeCacheMountJson(next), revision);
      return next;
    } catch (err) {
      if (!isWrongSequence(err) && !/exists/i.test(String((err as Error).message))) throw err;
    }
  }
  throw new CacheMountStateError('cache mount version kept changing', { key });
}

export interface CacheMountLockOptions {
  /** A holder that stopped renewing for this long loses the lock. Default 30 s. */
  leaseMs?: number;
  /** How often a waiter looks again. Default 100 ms. */
  pollMs?: number;
}

/** A lock held; `release` once (it stops the renewals and deletes the key if still ours). */
export interface HeldCacheMountLock {
  readonly instance: number;
  release(): Promise<void>;
}

const delay = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal!.reason as Error);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/**
 * Farm-wide locks of cache mount instances, for one worker. `acquire` waits (FIFO is not
 * promised: whoever's create lands first after a release wins); `tryAcquire` takes a lock only
 * when it is free or its lease ran out.
 */
export class CacheMountLocks {
  readonly #leaseMs: number;
  readonly #pollMs: number;
  /** Revision of each lock key another holds, and when (on this clock) it was first seen. */
  readonly #seen = new Map<string, { revision: number; since: number }>();

  constructor(
    private readonly kv: KV,
    private readonly worker: string,
    o: CacheMountLockOptions = {},
  ) {
    this.#leaseMs = o.leaseMs ?? 30_000;
    this.#pollMs = o.pollMs ?? 100;
  }

  /** Waits for the lock of `instance` (or until `signal` aborts). */
  async acquire(
    name: string,
    instance: number,
    sharing: CacheMountLock['sharing'],
    signal?: AbortSignal,
  ): Promise<HeldCacheMountLock> {
    for (;;) {
      const held = await this.tryAcquire(name, instance, sharing);
      if (held) return held;
      await delay(this.#pollMs, signal);
    }
  }

  /** The lock of `instance` if it is free (or its holder's lease ran out), else undefined. */
  async tryAcquire(
    name: string,
    instance: number,
    sharing: CacheMountLock['sharing'],
  ): Promise<HeldCacheMountLock | undefined> {
    const key = cacheMountLockKey(name, instance);
    const mine: CacheMountLock = {
      worker: this.worker,
      token: randomBytes(12).toString('hex'),
      sharing,
    };
    const data = encodeCacheMountJson(mine);
    const e = await this.kv.get(key);
    let revision: number;
    try {
      if (!e || e.operation !== 'PUT') {
        revision = e
          ? await this.kv.update(key, data, e.revision)
          : await this.kv.create(key, data);
      } else {
        const seen = this.#seen.get(key);
        const now = performance.now();
        if (!seen || seen.revision !== e.revision) {
          this.#seen.set(key, { revision: e.revision, since: now });
          return undefined;
        }
        if (now - seen.since < this.#leaseMs) return undefined;
        // The holder stopped renewing: its lease ran out.
        revision = await this.kv.update(key, data, e.revision);
      }
    } catch (err) {
      if (isWrongSequence(err) || /exists/i.test(String((err as Error).message))) return undefined;
      throw err;
    }
    this.#seen.delete(key);
    return this.#held(key, instance, data, revision);
  }

  #held(key: string, instance: number, data: Uint8Array, revision: number): HeldCacheMountLock {
    let rev = revision;
    let released = false;
    let renewing: Promise<void> = Promise.resolve();
    const timer = setInterval(
      () => {
        renewing = this.kv.update(key, data, rev).then(
          (r) => {
            rev = r;
          },
          // Lost (taken over after a stall) or the bus is away: the next renewal tries again;
          // release deletes nothing that is not ours.
          () => undefined,
        );
      },
      Math.max(10, Math.floor(this.#leaseMs / 3)),
    );
    timer.unref();
    return {
      instance,
      release: async () => {
        if (released) return;
        released = true;
        clearInterval(timer);
        await renewing;
        await this.kv.delete(key, { previousSeq: rev }).catch((err: unknown) => {
          if (!isWrongSequence(err)) throw err;
        });
      },
    };
  }
}
