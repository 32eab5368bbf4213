/**
 * The client's end of a build session (`Control.Session`): what the build may ask of the machine
 * that submitted it while it runs. BuildKit's session, over one gRPC stream:
 * - local directories, listed as a content manifest filtered by the op's include/exclude
 *   patterns (as fsutil walks) and streamed in chunks, then only the files the farm's store
 *   lacks, on request; file digests persist between processes in `digestCacheDir`;
 * - secrets by id (sent only when asked, never stored by the farm);
 * - ssh agent connections, relayed to the local agent socket;
 * - registry credentials by host (`registryAuth`, BuildKit's session/auth): the build pulls and
 *   pushes as the user, sent only when asked, never stored by the farm;
 * - exporters' artifacts, streamed back and handed to `onExport`.
 *
 * A request for a path outside a served directory, or in none of the manifests this session listed
 * of it, is refused. (A multi-platform build lists one directory once per platform, each with its
 * own include patterns (`COPY ${TARGETARCH}/...`), and fetches from any of them afterwards.)
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import type { Socket } from 'node:net';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import type { Writable } from 'node:stream';
import { EncodedMessage } from './grpc-h2.js';
import type { GrpcCall } from './grpc-h2.js';
import { KilnError, control } from '@kiln/protocol';
import { Listing, sessionManifestMessage } from './context-listing.js';
import type { ManifestPatterns } from './context-listing.js';
import { FileDigestCache } from './hash-cache.js';
import { isRetryable } from './retry.js';

export type { ManifestPatterns } from './context-listing.js';

type SessionMessage = InstanceType<typeof control.SessionMessage>;
type SessionMessageInit = NonNullable<Parameters<typeof control.SessionMessage.create>[0]>;
type ManifestRequest = NonNullable<SessionMessage['manifestRequest']>;

export type SessionStream = GrpcCall<SessionMessage, SessionMessage>;

export interface SessionOptions {
  /** Default: a random id. */
  sessionId?: string;
  /** Directories served by name (`local://<name>`), e.g. `{ context: '/src/app' }`. */
  localDirs?: Readonly<Record<string, string>>;
  /** A secret's value by id; undefined when there is none. */
  secrets?: (id: string) => Promise<Uint8Array | undefined>;
  /** An ssh agent socket path by ssh id (`default` for `--mount=type=ssh`). */
  ssh?: Readonly<Record<string, string>>;
  /**
   * The user's credentials for a registry host (`docker.io`, `ghcr.io`, `127.0.0.1:5000`), e.g.
   * from the docker config; undefined for none (anonymous). Without it the farm's pulls and
   * pushes for this build are anonymous, unless the farm is configured to use its own.
   */
  registryAuth?: (host: string) => Promise<{ username: string; secret: string } | undefined>;
  /** Where an exporter's artifact goes (`index` in the solve's exporters; platform or ''). */
  onExport?: (index: number, platform: string) => Writable;
  /**
   * Where a cache export's artifact goes (`index` in the solve's cache exports): for
   * `type=local`, a tar of the OCI layout (see `writeLocalCache`).
   */
  onCacheExport?: (index: number) => Writable;
  /**
   * Identifies this machine's directories across sessions (BuildKit's session shared key): the
   * farm applies only the difference to the copy it kept from the last build with the same key.
   * Default: a hash of the host name and the directories' absolute paths; '' turns reuse off.
   */
  sharedKey?: string;
  /**
   * A directory where file digests persist between processes, one file per served directory
   * (see `hash-cache.ts`), e.g. under the client's state dir; without it digests are kept for
   * this session only.
   */
  digestCacheDir?: string;
  /**
   * A content store directory this client can read: its local farm's (`<state dir>/store`). A
   * farm whose store it is then hands artifacts over by reference: they are copied from the
   * store here (their digest checked) instead of streamed through the session.
   */
  localStore?: string;
  /**
   * How long a session stream cut by a scheduler that went away (UNAVAILABLE, or
   * `SCHEDULER_UNAVAILABLE`) is opened again before the session fails. Default 0: it fails at
   * once. `KilnClient.session` sets its `reconnectWindowMs`.
   */
  reconnectWindowMs?: number;
  /**
   * Told at once when the stream breaks with a failure it will be opened again after (before the
   * backoff): `KilnClient.session` moves the client to its next scheduler there, so that a solve
   * sent meanwhile (`solveAndReceive` solving again) goes where the session reopens.
   */
  onBreak?: (failed: unknown) => void;
  /**
   * Listings the farm is expected to ask for (e.g. the build context with its `.dockerignore`
   * patterns): each is walked in the background from the session's start, while the farm runs
   * the frontend, and answers the first manifest request with the same directory and patterns.
   * The walk (names, stats, cached digests) is done ahead, and so are the files without a
   * cached digest, hashed, and the listing's digest, when those files hold at most
   * `prefetchHashBytes` (else they are hashed when the request comes). A walk past
   * `prefetchMaxEntries` entries is given up (a context the build may never read costs at most
   * that).
   */
  prefetch?: readonly ManifestPatterns[];
  /** Default 50,000. */
  prefetchMaxEntries?: number;
  /** Default 32 MiB. */
  prefetchHashBytes?: number;
}

const patternsKey = (r: ManifestPatterns): string =>
  JSON.stringify([
    r.dir ?? '',
    r.includePatterns ?? [],
    r.excludePatterns ?? [],
    r.followPaths ?? [],
  ]);

/**
 * Opens the session's stream: `failed` is the error that ended the previous one (undefined for
 * the first), so that the opener can move to another scheduler.
 */
export type SessionOpener = (failed?: unknown) => SessionStream;

const CHUNK = 256 * 1024;

/** Entries per ContextManifest message (the list is streamed: no message-size limit). */
const MANIFEST_CHUNK = 2_000;
const HASH_CONCURRENCY = 8;
/** A prefetched walk stops (and the request walks afresh) past this many entries. */
const PREFETCH_MAX_ENTRIES = 50_000;
/** A prefetched walk hashes its new or changed files ahead when they hold at most this much. */
const PREFETCH_HASH_BYTES = 32 << 20;
/** Files of one multi-file request read ahead of the one being sent. */
const READ_AHEAD = 16;

/** Files up to this size are read whole and synchronously (one call instead of a stream's several). */
const SMALL_FILE = 256 * 1024;

async function fileDigest(path: string, size: number): Promise<string> {
  const h = createHash('sha256');
  if (size <= SMALL_FILE) h.update(readFileSync(path));
  else for await (const c of createReadStream(path)) h.update(c as Buffer);
  return `sha256:${h.digest('hex')}`;
}

/** `fn` over `items`, at most `limit` at once; results in input order. */
async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/**
 * The default shared key: this machine and the directories served, so that the farm's copy of a
 * context is reused only by the next build of the same directories from the same machine.
 */
function defaultSharedKey(localDirs: Readonly<Record<string, string>>): string {
  const h = createHash('sha256').update(hostname());
  for (const [name, dir] of Object.entries(localDirs).sort(([a], [b]) => (a < b ? -1 : 1)))
    h.update(`\0${name}\0${resolve(dir)}`);
  return h.digest('hex');
}

export class BuildSession {
  readonly id: string;
  readonly #o: SessionOptions;
  #call: SessionStream;
  readonly #open: SessionOpener;
  #failingSince: number | undefined;
  #backoff = 50;
  /** Paths the manifests of each directory listed, all of them (the only ones served). */
  readonly #served = new Map<string, Set<string>>();
  readonly #cache: FileDigestCache;
  #cacheSaved: Promise<void> = Promise.resolve();
  readonly #ssh = new Map<number, Socket>();
  readonly #exports = new Map<string, Writable>();
  #exportsDone = 0;
  #exportWaiters: (() => void)[] = [];
  /**
   * Set when the stream reopened while artifacts were arriving or awaited, until an artifact
   * starts arriving again: the next scheduler sends them only if it solves the build again.
   */
  #exportsInterrupted = false;
  #failure: Error | undefined;
  #ended = false;
  /** Artifacts received by reference and copied from the local store (see `localStore`). */
  exportsFromStore = 0;
  /** Walks started ahead of their request (`prefetch`), by `patternsKey`. */
  readonly #prefetched = new Map<string, Promise<Listing | undefined>>();
  /** Manifests answered from a prefetched walk (for tests and logs). */
  prefetchHits = 0;
  /** Files hashed by prefetched walks ahead of their request (for tests and logs). */
  hashedAhead = 0;

  constructor(open: SessionOpener, o: SessionOptions = {}) {
    this.id = o.sessionId ?? randomUUID();
    this.#o = o;
    this.#open = open;
    this.#cache = new FileDigestCache(o.digestCacheDir);
    this.#call = this.#connect(undefined);
    for (const r of o.prefetch ?? []) {
      const key = patternsKey(r);
      if (this.#prefetched.has(key) || o.localDirs?.[r.dir ?? ''] === undefined) continue;
      // After the hello and the solve are on their way: the walk yields between directories.
      const walk = new Promise<void>((res) => setImmediate(res))
        .then(() =>
          this.#ended ? undefined : this.#list(r, o.prefetchMaxEntries ?? PREFETCH_MAX_ENTRIES),
        )
        .then(async (l) => {
          // The files to hash too, and the listing's digest, when they cost little: the request
          // then finds the manifest made (what it waited for was ~100 ms of a changed build).
          const bytes = l?.toHash.reduce((n, f) => n + f.size, 0) ?? Infinity;
          if (l && !this.#ended && bytes <= (o.prefetchHashBytes ?? PREFETCH_HASH_BYTES)) {
            this.hashedAhead += l.toHash.length;
            await this.#hash(l);
            l.manifestChunks(MANIFEST_CHUNK);
          }
          return l;
        });
      // A walk that failed is done again, and fails, when the farm asks.
      this.#prefetched.set(
        key,
        walk.catch(() => undefined),
      );
    }
  }

  /** Opens the stream and says hello; a retryable failure opens it again (same id). */
  #connect(failed: unknown): SessionStream {
    const call = this.#open(failed);
    call.on('data', (m: SessionMessage) => {
      this.#failingSince = undefined;
      this.#backoff = 50;
      this.#onMessage(m).catch((e: unknown) => this.#fail(e));
    });
    call.on('error', (e: Error) => {
      if (this.#ended || call !== this.#call) return;
      if (!this.#reconnect(e)) this.#fail(e);
    });
    const o = this.#o;
    call.write(
      control.SessionMessage.create({
        hello: {
          sessionId: this.id,
          localDirs: Object.keys(o.localDirs ?? {}),
          sshIds: Object.keys(o.ssh ?? {}),
          registryAuth: o.registryAuth !== undefined,
          sharedKey: o.sharedKey ?? defaultSharedKey(o.localDirs ?? {}),
          ...(o.localStore ? { localStore: resolve(o.localStore) } : {}),
        },
      }),
    );
    return call;
  }

  /**
   * After the stream failed with `e`: opens it again after a backoff if `e` is a scheduler going
   * away and the reconnect window is not spent. What was in flight on the old stream is dropped:
   * ssh connections close, artifacts half received are discarded (the next scheduler sends them
   * again from the start).
   */
  #reconnect(e: Error): boolean {
    const window = this.#o.reconnectWindowMs ?? 0;
    if (window <= 0 || !isRetryable(e)) return false;
    this.#failingSince ??= Date.now();
    if (Date.now() - this.#failingSince > window) return false;
    for (const s of this.#ssh.values()) s.destroy();
    this.#ssh.clear();
    // Artifacts are sent again from the start, and only by a scheduler that solves the build
    // again: what was counted is forgotten, and a wait for them is told (exportsWritten).
    if (this.#exports.size > 0 || this.#exportWaiters.length > 0 || this.#exportsDone > 0)
      this.#exportsInterrupted = true;
    for (const w of this.#exports.values()) w.destroy();
    this.#exports.clear();
    this.#exportsDone = 0;
    this.#o.onBreak?.(e);
    for (const w of this.#exportWaiters.splice(0)) w();
    const wait = this.#backoff;
    this.#backoff = Math.min(this.#backoff * 2, 1_000);
    setTimeout(() => {
      if (this.#ended) return;
      this.#call = this.#connect(e);
    }, wait);
    return true;
  }

  /**
   * Resolves once `count` artifacts have been written whole (see `export.count`). If the
   * scheduler sending them went away first (the session reopened on another, which knows nothing
   * of them), fails with a retryable `SESSION_EXPORT_INTERRUPTED`: solve the build again (its
   * steps are cached) and wait again ({@link solveAndReceive}).
   */
  async exportsWritten(count: number): Promise<void> {
    while (this.#exportsDone < count) {
      if (this.#failure) throw this.#failure;
      if (this.#exportsInterrupted) {
        this.#exportsInterrupted = false;
        throw new KilnError(
          'SESSION_EXPORT_INTERRUPTED',
          `the scheduler sending this build's ${count} output(s) went away before they all arrived`,
          { retryable: true },
        );
      }
      await new Promise<void>((r) => this.#exportWaiters.push(r));
    }
    if (this.#failure) throw this.#failure;
  }

  /** Resolves once the file digests learnt by this session's listings are written (or failed to). */
  cacheSaved(): Promise<void> {
    return this.#cacheSaved;
  }

  close(): void {
    this.#ended = true;
    for (const s of this.#ssh.values()) s.destroy();
    for (const w of this.#exports.values()) w.destroy();
    this.#call.end();
    this.#call.cancel();
  }

  #fail(e: unknown): void {
    this.#failure ??= e instanceof Error ? e : new Error(String(e));
    for (const w of this.#exportWaiters.splice(0)) w();
  }

  #send(m: SessionMessageInit): void {
    if (!this.#ended) this.#call.write(control.SessionMessage.create(m));
  }

  #sendError(id: SessionMessage['id'], code: string, message: string): void {
    this.#send({ id, error: { code, message } });
  }

  async #onMessage(m: SessionMessage): Promise<void> {
    const id = m.id;
    if (m.manifestRequest) {
      try {
        await this.#sendManifest(id, m.manifestRequest);
      } catch (e) {
        this.#sendError(id, e instanceof KilnError ? e.code : 'LOCAL_UNREADABLE', String(e));
      }
    } else if (m.fileRequest) {
      const f = m.fileRequest;
      await this.#sendFiles(id, f.dir ?? '', f.paths?.length ? f.paths : [f.path ?? '']);
    } else if (m.secretRequest) {
      const data = await this.#o.secrets?.(m.secretRequest.id ?? '');
      this.#send({
        id,
        secretResponse: data === undefined ? { notFound: true } : { data },
      });
    } else if (m.authRequest) {
      let creds: { username: string; secret: string } | undefined;
      try {
        creds = await this.#o.registryAuth?.(m.authRequest.host ?? '');
      } catch (e) {
        // The message only: a credential helper's failure, never its output.
        this.#sendError(id, 'REGISTRY_AUTH', e instanceof Error ? e.message : String(e));
        return;
      }
      this.#send({
        id,
        authResponse: creds
          ? { username: creds.username, secret: creds.secret }
          : { notFound: true },
      });
    } else if (m.ssh) {
      this.#onSsh(m.ssh);
    } else if (m.export) {
      await this.#onExport(m.export);
    }
  }

  // ---- local directories ----

  /**
   * Streams the manifest of one directory, in chunks of MANIFEST_CHUNK entries, the last with
   * the listing's digest; or only `unchanged` when that digest is the request's
   * `ifChangedFrom` (the farm holds the sync of this very listing).
   */
  async #sendManifest(id: SessionMessage['id'], r: ManifestRequest): Promise<void> {
    const listing = await this.#manifest(r);
    const digest = listing.digest();
    if (r.ifChangedFrom && r.ifChangedFrom === digest) {
      this.#send({ id, manifest: { digest, unchanged: true } });
      return;
    }
    const idValue = id == null ? 0 : typeof id === 'number' ? id : BigInt(id.toString());
    for (const chunk of listing.manifestChunks(MANIFEST_CHUNK)) {
      if (this.#ended) return;
      // Encoded here (see Listing.manifestChunks), written as it is.
      (this.#call as GrpcCall<SessionMessage | EncodedMessage, SessionMessage>).write(
        new EncodedMessage(sessionManifestMessage(idValue, chunk)),
      );
      if (this.#call.writableNeedDrain) await new Promise((r) => this.#call.once('drain', r));
    }
  }

  /**
   * The listing `r` asks for: the walk started ahead for the same directory and patterns if there
   * is one (used once: a later request walks again), else a new walk; then the files without a
   * cached digest are hashed, and the files listed may be served.
   */
  async #manifest(r: ManifestRequest): Promise<Listing> {
    const key = patternsKey(r);
    const ahead = this.#prefetched.get(key);
    this.#prefetched.delete(key);
    let listing = ahead ? await ahead : undefined;
    if (listing) this.prefetchHits++;
    else listing = (await this.#list(r))!;
    const dir = r.dir ?? '';
    // One set per directory from the first listing on: listings run concurrently.
    let served = this.#served.get(dir);
    if (!served) this.#served.set(dir, (served = new Set<string>()));
    for (const f of listing.files) served.add(f);
    await this.#hash(listing);
    // A cache that cannot be written costs only a re-read next time.
    // Not on the listing's path (writing ~100 bytes a file costs ms): awaited by `cacheSaved()`
    // once the build is over. Unchanged, it only renews the file's mtime (used last, kept).
    this.#cacheSaved = this.#cache.save().catch(() => undefined);
    return listing;
  }

  /** Hashes the listing's files that have no cached digest yet (once: they leave `toHash`). */
  async #hash(listing: Listing): Promise<void> {
    const todo = listing.toHash.splice(0);
    await mapLimit(todo, HASH_CONCURRENCY, async (f) => {
      const digest = await fileDigest(f.abs, f.size);
      listing.digests[f.index] = digest;
      listing.cache.set(listing.paths[f.index]!, f.stamp, digest);
    });
  }

  /**
   * Walks the directory `r` names with its patterns (see `Listing.walk`); with `maxEntries` (a
   * walk ahead of its request), gives up past that many entries or once the session ended.
   */
  #list(r: ManifestPatterns, maxEntries?: number): Promise<Listing | undefined> {
    const dir = r.dir ?? '';
    const root = this.#o.localDirs?.[dir];
    if (root === undefined)
      throw new KilnError('LOCAL_NOT_FOUND', `this session serves no directory named "${dir}"`);
    const top = resolve(root);
    return Listing.walk(top, r, this.#cache.root(top), {
      ...(maxEntries === undefined ? {} : { maxEntries }),
      ended: () => this.#ended,
    });
  }

  /** Sends one file, or several back to back (`paths`), as one stream of chunks. */
  async #sendFiles(id: SessionMessage['id'], dir: string, paths: string[]): Promise<void> {
    const root = this.#o.localDirs?.[dir];
    const served = this.#served.get(dir);
    const refused = root === undefined ? paths[0] : paths.find((p) => !served?.has(p));
    if (root === undefined || refused !== undefined) {
      this.#sendError(
        id,
        'LOCAL_NOT_SERVED',
        `${dir}:${refused} is not in the directory's manifest`,
      );
      return;
    }
    let path = '';
    try {
      if (paths.length === 1) {
        path = paths[0]!;
        for await (const c of createReadStream(join(root, path), { highWaterMark: CHUNK })) {
          this.#send({ id, fileChunk: { data: c as Buffer } });
          if (this.#call.writableNeedDrain) await new Promise((r) => this.#call.once('drain', r));
        }
      } else {
        // Many small files (a pack): read several ahead, send in the order asked.
        const reads: Promise<Buffer>[] = [];
        const readAt = (i: number): void => {
          if (i < paths.length) reads[i] = readFile(join(root, paths[i]!));
          reads[i]?.catch(() => undefined); // awaited in turn below
        };
        for (let i = 0; i < READ_AHEAD; i++) readAt(i);
        let buf: Buffer[] = [];
        let size = 0;
        for (let i = 0; i < paths.length; i++) {
          path = paths[i]!;
          const data = await reads[i]!;
          readAt(i + READ_AHEAD);
          buf.push(data);
          size += data.length;
          if (size >= CHUNK || i === paths.length - 1) {
            this.#send({ id, fileChunk: { data: Buffer.concat(buf) } });
            buf = [];
            size = 0;
            if (this.#call.writableNeedDrain) await new Promise((r) => this.#call.once('drain', r));
          }
        }
      }
      this.#send({ id, fileChunk: { eof: true } });
    } catch (e) {
      this.#sendError(id, 'LOCAL_UNREADABLE', `${dir}:${path}: ${String(e)}`);
    }
  }

  // ---- ssh ----

  #onSsh(f: NonNullable<SessionMessage['ssh']>): void {
    const stream = Number(f.stream);
    let sock = this.#ssh.get(stream);
    if (!sock) {
      if (f.close) return;
      const path = this.#o.ssh?.[f.id || 'default'];
      if (path === undefined) {
        this.#send({ ssh: { id: f.id, stream: f.stream, close: true } });
        return;
      }
      const s = createConnection(path);
      this.#ssh.set(stream, s);
      s.on('data', (d: Buffer) => this.#send({ ssh: { id: f.id, stream: f.stream, data: d } }));
      const done = (): void => {
        if (this.#ssh.get(stream) !== s) return;
        this.#ssh.delete(stream);
        this.#send({ ssh: { id: f.id, stream: f.stream, close: true } });
      };
      s.on('close', done);
      s.on('error', done);
      sock = s;
    }
    if (f.data?.length) sock.write(f.data);
    if (f.close) {
      this.#ssh.delete(stream);
      sock.end();
    }
  }

  // ---- exports ----

  /**
   * Copies the blob `digest` (`size` bytes) of the local store into `w` and ends it; fails (and
   * destroys `w`, so that nothing partial is left) when this session named no store, or the
   * blob is missing or not what its digest says.
   */
  async #copyStored(digest: string, size: number, w: Writable): Promise<void> {
    const store = this.#o.localStore;
    const hex = /^sha256:([0-9a-f]{64})$/.exec(digest)?.[1];
    // Throws once `w` is destroyed and closed: a file writer has removed what it wrote by then.
    const fail = async (message: string, cause?: unknown): Promise<never> => {
      w.on('error', () => undefined); // what the destroyed writer still reports: this failure
      if (!w.closed) await new Promise((r) => w.once('close', r).destroy());
      throw new KilnError('EXPORT_BLOB_INVALID', message, cause ? { cause } : {});
    };
    if (!store || !hex) return fail(`artifact ${digest}: not a blob this client reads`);
    const h = createHash('sha256');
    let got = 0;
    try {
      for await (const c of createReadStream(join(resolve(store), 'blobs', 'sha256', hex), {
        highWaterMark: CHUNK,
      })) {
        const b = c as Buffer;
        h.update(b);
        got += b.length;
        if (!w.write(b)) await new Promise((r) => w.once('drain', r));
      }
    } catch (cause) {
      return fail(`artifact ${digest}: cannot read it from the store ${store}`, cause);
    }
    if (got !== size || `sha256:${h.digest('hex')}` !== digest)
      return fail(`artifact ${digest}: the store's copy is not that blob`);
    await new Promise<void>((res, rej) => {
      w.once('error', rej);
      w.once('finish', res);
      w.end();
    });
  }

  async #onExport(c: NonNullable<SessionMessage['export']>): Promise<void> {
    const key = `${c.cache ? 'cache' : ''}\0${c.index}\0${c.platform}`;
    let w = this.#exports.get(key);
    this.#exportsInterrupted = false;
    if (!w) {
      const open = c.cache
        ? this.#o.onCacheExport && ((i: number) => this.#o.onCacheExport!(i))
        : this.#o.onExport;
      if (!open) throw new KilnError('EXPORT_UNEXPECTED', 'no export was asked for');
      w = open(c.index ?? 0, c.platform ?? '');
      this.#exports.set(key, w);
    }
    if (c.blob) {
      if (!c.eof)
        throw new KilnError('EXPORT_BLOB_INVALID', 'an artifact by reference comes whole');
      this.#exports.delete(key);
      await this.#copyStored(c.blob, Number(c.size ?? 0), w);
      this.exportsFromStore++;
      this.#exportsDone++;
      for (const r of this.#exportWaiters.splice(0)) r();
      return;
    }
    if (c.data?.length && !w.write(c.data)) {
      // Chunks keep coming in order; stop reading until the destination catches up.
      this.#call.pause();
      w.once('drain', () => this.#call.resume());
    }
    if (c.eof) {
      this.#exports.delete(key);
      await new Promise<void>((resolve, reject) => {
        w.once('error', reject);
        w.once('finish', resolve);
        w.end();
      }).finally(() => this.#call.resume()); // an ended writer emits no 'drain'
      this.#exportsDone++;
      for (const r of this.#exportWaiters.splice(0)) r();
    }
  }
}
