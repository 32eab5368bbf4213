/**
 * Least-privilege NATS permissions per role, and a nats-server `authorization` block built from
 * them (the local and embedded farms generate one at start; `deploy/nats/` holds a sample).
 *
 * - **scheduler**: everything (it owns the streams, the buckets and every record).
 * - **worker `<id>`**: pulls the task queues and acks its messages; reads task records (it checks
 *   that its attempt is still current) but never writes one: claims and results are requests on
 *   its own `kiln.record.<id>` ({@link recordSubject}), which the scheduler validates and writes
 *   under compare-and-set, taking the worker's identity from the subject. It writes only its own
 *   registration (`$KV.kiln_workers.<id>`) and the cache mounts bucket (`$KV.kiln_cache_mounts.>`:
 *   versions and locks of cache mounts shared across workers, `cache-mounts.ts`), answers only its own offer, checksum, materialize and gc
 *   subjects, receives replies only on its own inbox ({@link workerInboxPrefix}), and may not
 *   subscribe to `>`, `kiln.session.>` or anyone's inbox. Sessions: it asks for a channel only
 *   under its own id (`kiln.sessionkey.*.<id>`, which the scheduler grants only to the holder of
 *   a claim, `session.ts`), and the channel's subjects are capabilities it cannot guess, whose
 *   payloads are sealed end to end; the ssh bytes to it arrive on its own inbox.
 * - **cache store** (`kiln-cache-store`, the content store's collector): reads the cache index and
 *   the cache mounts bucket (stream info, a watch through an ordered consumer it may create and
 *   delete, direct gets) and nothing else: it cannot write a record, a registration or a task,
 *   and receives only on its own inbox ({@link CACHE_STORE_INBOX_PREFIX}).
 * - **clients** (`kiln`, `@kiln/client`) never connect to NATS: they talk gRPC to the scheduler.
 */
import { randomBytes } from 'node:crypto';
import { createUser } from '@nats-io/nkeys';
import type { NatsAuth } from './nats-connect.js';
import { CACHE_MOUNTS_BUCKET } from './cache-mounts.js';
import { TASK_STREAM, TASKS_BUCKET, WORKERS_BUCKET, assertWorkerId } from './subjects.js';

export interface NatsPermissions {
  publish: { allow: string[] };
  subscribe: { allow: string[] };
  /** Replying to a request received (offers, checksums, materialize) without publish rights on `_INBOX`. */
  allowResponses?: boolean;
}

/** Where a worker's request replies go: `_INBOX_worker.<id>`. */
export function workerInboxPrefix(workerId: string): string {
  return `_INBOX_worker.${assertWorkerId(workerId)}`;
}

/** Where the cache store's replies and watch deliveries go. */
export const CACHE_STORE_INBOX_PREFIX = '_INBOX_cachestore';

/** Read-only access to the buckets the store's collector marks from. */
export function cacheStorePermissions(): NatsPermissions {
  const js = '$JS.API';
  const read = (bucket: string): string[] => {
    const stream = `KV_${bucket}`;
    return [
      `${js}.STREAM.INFO.${stream}`,
      // A watch: an ephemeral ordered consumer, made again after a gap and deleted at the end.
      `${js}.CONSUMER.CREATE.${stream}`,
      `${js}.CONSUMER.CREATE.${stream}.>`,
      `${js}.CONSUMER.INFO.${stream}.*`,
      `${js}.CONSUMER.DELETE.${stream}.*`,
      `${js}.DIRECT.GET.${stream}`,
      `${js}.DIRECT.GET.${stream}.>`,
      `${js}.STREAM.MSG.GET.${stream}`,
    ];
  };
  return {
    publish: { allow: [`${js}.INFO`, ...read(TASKS_BUCKET), ...read(CACHE_MOUNTS_BUCKET)] },
    subscribe: { allow: [`${CACHE_STORE_INBOX_PREFIX}.>`] },
    // Flow control and heartbeats of the watch are answered on the reply subject it was sent.
    allowResponses: true,
  };
}

export function schedulerPermissions(): NatsPermissions {
  return { publish: { allow: ['>'] }, subscribe: { allow: ['>'] } };
}

export function workerPermissions(workerId: string): NatsPermissions {
  const id = assertWorkerId(workerId);
  const js = '$JS.API';
  const tasksStream = `KV_${TASKS_BUCKET}`;
  const workersStream = `KV_${WORKERS_BUCKET}`;
  const cacheMountsStream = `KV_${CACHE_MOUNTS_BUCKET}`;
  return {
    publish: {
      allow: [
        `${js}.INFO`,
        `${js}.STREAM.INFO.${TASK_STREAM}`,
        `${js}.STREAM.INFO.${tasksStream}`,
        `${js}.STREAM.INFO.${workersStream}`,
        `${js}.STREAM.INFO.${cacheMountsStream}`,
        // The platform queues: find or create the durable pull consumer, pull, ack.
        `${js}.CONSUMER.INFO.${TASK_STREAM}.*`,
        `${js}.CONSUMER.CREATE.${TASK_STREAM}`,
        `${js}.CONSUMER.CREATE.${TASK_STREAM}.>`,
        `${js}.CONSUMER.DURABLE.CREATE.${TASK_STREAM}.*`,
        `${js}.CONSUMER.MSG.NEXT.${TASK_STREAM}.*`,
        `$JS.ACK.${TASK_STREAM}.>`,
        // Reading task records (never writing them).
        `${js}.DIRECT.GET.${tasksStream}`,
        `${js}.DIRECT.GET.${tasksStream}.>`,
        `${js}.STREAM.MSG.GET.${tasksStream}`,
        // Cache mounts shared across workers: versions and locks (cache-mounts.ts). Any
        // worker runs any tenant's tasks, so this bucket is not split per worker.
        `${js}.DIRECT.GET.${cacheMountsStream}`,
        `${js}.DIRECT.GET.${cacheMountsStream}.>`,
        `${js}.STREAM.MSG.GET.${cacheMountsStream}`,
        `$KV.${CACHE_MOUNTS_BUCKET}.>`,
        // Its own registration only.
        `$KV.${WORKERS_BUCKET}.${id}`,
        `kiln.record.${id}`,
        'kiln.progress.>',
        // Asking the holder of an input for its blobs.
        'kiln.materialize.*',
        // A session channel: asked for under its own id; then by capability (session.ts).
        `kiln.sessionkey.*.${id}`,
        'kiln.session.*.local',
        'kiln.session.*.secret',
        'kiln.session.*.auth',
        'kiln.session.*.ssh',
        'kiln.session.*.close',
        'kiln.session.*.ssh.*.up',
      ],
    },
    subscribe: {
      allow: [
        `kiln.offer.${id}`,
        `kiln.checksum.${id}`,
        `kiln.materialize.${id}`,
        // du and prune of its own local cache, asked by the scheduler.
        `kiln.gc.${id}`,
        `${workerInboxPrefix(id)}.>`,
      ],
    },
    allowResponses: true,
  };
}

/** A user of the generated config: a password (plain, in a 0600 file) or an nkey public key. */
export type NatsUserAuth = { user: string; password: string } | { nkey: string };

export interface NatsAuthorizationSpec {
  scheduler: NatsUserAuth[];
  workers: (NatsUserAuth & { id: string })[];
  /** Users of the store's collector ({@link cacheStorePermissions}). */
  cacheStore?: NatsUserAuth[];
}

function q(s: string): string {
  return JSON.stringify(s);
}

function userBlock(auth: NatsUserAuth, p: NatsPermissions): string {
  const who =
    'nkey' in auth
      ? `nkey: ${q(auth.nkey)}`
      : `user: ${q(auth.user)}, password: ${q(auth.password)}`;
  const list = (xs: string[]): string => `[${xs.map(q).join(', ')}]`;
  const perms = [
    `publish: { allow: ${list(p.publish.allow)} }`,
    `subscribe: { allow: ${list(p.subscribe.allow)} }`,
    ...(p.allowResponses ? ['allow_responses: true'] : []),
  ];
  return `    { ${who}, permissions: { ${perms.join(', ')} } }`;
}

/**
 * The nats-server `authorization { users = [...] }` block giving each scheduler user
 * {@link schedulerPermissions} and each worker user {@link workerPermissions} of its id. Anonymous
 * clients are refused (no `no_auth_user`).
 */
export function natsAuthorizationConfig(spec: NatsAuthorizationSpec): string {
  const users = [
    ...spec.scheduler.map((a) => userBlock(a, schedulerPermissions())),
    ...spec.workers.map((w) => userBlock(w, workerPermissions(w.id))),
    ...(spec.cacheStore ?? []).map((a) => userBlock(a, cacheStorePermissions())),
  ];
  return `authorization {\n  users = [\n${users.join(',\n')}\n  ]\n}\n`;
}

/** Generated credentials of a farm: one user per role. */
export interface GeneratedFarmAuth {
  /** The nats-server `authorization` block (secret with passwords: write it 0600). */
  config: string;
  /** How each role connects: user and password, or (with `nkeys`) nothing yet: see `seeds`. */
  scheduler: NatsAuth;
  workers: Record<string, NatsAuth>;
  /** The store's collector (`kiln-cache-store`). */
  cacheStore: NatsAuth;
  /** With `nkeys`: each role's nkey seed (`SU...`), to write 0600 where the service reads it. */
  seeds?: { scheduler: string; workers: Record<string, string>; cacheStore: string };
}

/**
 * A user per role: `kiln-scheduler`, `kiln-cache-store`, and `kiln-worker-<id>` for each worker id, with random
 * 256-bit passwords (what the local and embedded farms run nats-server with, so they stay
 * zero-config), or with `nkeys` an nkey pair per role (the config then holds only public keys).
 */
export function generateFarmAuth(
  workerIds: readonly string[],
  o: { nkeys?: boolean } = {},
): GeneratedFarmAuth {
  const ids = workerIds.map(assertWorkerId);
  if (o.nkeys) {
    const dec = new TextDecoder();
    const pair = () => {
      const kp = createUser();
      return { nkey: kp.getPublicKey(), seed: dec.decode(kp.getSeed()) };
    };
    const scheduler = pair();
    const cacheStore = pair();
    const workers = ids.map((id) => ({ id, ...pair() }));
    return {
      config: natsAuthorizationConfig({
        scheduler: [{ nkey: scheduler.nkey }],
        workers: workers.map((w) => ({ id: w.id, nkey: w.nkey })),
        cacheStore: [{ nkey: cacheStore.nkey }],
      }),
      scheduler: {},
      workers: Object.fromEntries(ids.map((id) => [id, {}])),
      cacheStore: {},
      seeds: {
        scheduler: scheduler.seed,
        workers: Object.fromEntries(workers.map((w) => [w.id, w.seed])),
        cacheStore: cacheStore.seed,
      },
    };
  }
  const password = (): string => randomBytes(32).toString('base64url');
  const scheduler = { user: 'kiln-scheduler', password: password() };
  const cacheStore = { user: 'kiln-cache-store', password: password() };
  const workers = ids.map((id) => ({ id, user: `kiln-worker-${id}`, password: password() }));
  return {
    config: natsAuthorizationConfig({ scheduler: [scheduler], workers, cacheStore: [cacheStore] }),
    scheduler,
    cacheStore,
    workers: Object.fromEntries(workers.map((w) => [w.id, { user: w.user, password: w.password }])),
  };
}
