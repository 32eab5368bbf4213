/**
 * The worker's side of selector-level content keys: it answers `kiln.checksum.<workerId>`
 * (`@kiln/bus` checksum.ts) for the results it holds. Given a result id and dep specs (selectors,
 * wildcard, followLinks, include/exclude patterns), it mounts the held snapshot read-only and
 * returns each spec's content checksum ({@link depChecksum}; of a synced context, from the
 * manifest its tree was written from, {@link manifestChecksum}, without reading the tree). The scheduler keys a COPY (or a read-only subpath mount) by that digest instead of the
 * whole input's result id, so a change elsewhere in the input leaves the vertex cached.
 *
 * - Results are immutable: digests are memoized per (result id, spec), at most `memoEntries`
 *   (least recently used go first), and persisted beside the held results when `persist` is
 *   given, so they are computed once per result, not once per process; a failed computation is
 *   not remembered. A synced context's file digests come from its manifest (`fileDigests`): its
 *   files are then not read at all.
 * - A result this worker does not hold, a malformed request, or a selector that cannot be
 *   checksummed (a missing path) is an error reply, never a crash; the asker then keys by the
 *   result id.
 * - At most `concurrency` checksums are computed at once; the others wait their turn.
 */
import type { NatsConnection, Msg } from '@nats-io/transport-node';
import {
  ChecksumResultUnknownError,
  checksumSubject,
  decodeChecksumRequest,
  encodeChecksumJson,
  normalizeChecksumDep,
} from '@kiln/bus';
import type { ChecksumDepSpec, ChecksumEntry, ChecksumReply, ChecksumReplyError } from '@kiln/bus';
import { KilnError } from '@kiln/protocol';
import { RequestSubscription } from './request-subscription.js';
import { depChecksum } from '../cache/dep-checksum.js';
import { manifestChecksum } from '../cache/manifest-checksum.js';
import { lstat } from 'node:fs/promises';
import type { ManifestEntry } from '@kiln/bus';
import { buildkitChecksum, buildkitChecksumSupported } from '../cache/buildkit-contenthash.js';
import { EMPTY_RESULT_ID } from './result-id.js';

/** What the responder needs of the worker: its held results and a read-only view of them. */
export interface HeldSnapshots {
  /** The committed snapshot of a held result; undefined when not held. */
  snapshotOf(resultId: string): string | undefined;
  /** Shows a snapshot (undefined: the empty tree) read-only for the duration of `fn`. */
  read<T>(snapshot: string | undefined, fn: (dir: string) => Promise<T>): Promise<T>;
  /**
   * The content digests of a snapshot's files when known without reading them (a synced local
   * context: its manifest), by path with a leading `/`; undefined: the files are read.
   */
  fileDigests?(
    snapshot: string,
  ): Promise<ReadonlyMap<string, { size: number; digest: string }> | undefined>;
  /**
   * The manifest a snapshot's tree was written from (a synced local context), entry by entry;
   * undefined: the tree is read.
   */
  manifest?(snapshot: string): Promise<readonly ManifestEntry[] | undefined>;
}

/** Checksums kept across restarts (a {@link KvFile}): results are immutable, so they never go stale. */
export interface ChecksumStore {
  get(key: string): string | undefined;
  set(key: string, digest: string): Promise<void>;
  delete(key: string): Promise<void>;
  keys(): string[];
}

export interface ChecksumResponderOptions {
  nc: NatsConnection;
  workerId: string;
  held: HeldSnapshots;
  /** Memoized digests kept; default 10,000. */
  memoEntries?: number;
  /**
   * Where computed checksums persist (beside the held results), so that a restarted worker does
   * not compute them again; at most `memoEntries` are kept there too.
   */
  persist?: ChecksumStore;
  /** Checksums computed at once; default 4. */
  concurrency?: number;
  /** A request failed in a way worth a log line (not an expected error reply). */
  onError?: (err: unknown) => void;
}

function replyError(e: unknown): ChecksumReplyError {
  if (e instanceof KilnError) return { code: e.code, message: e.message };
  return { code: 'CHECKSUM_FAILED', message: e instanceof Error ? e.message : String(e) };
}

export class ChecksumResponder {
  readonly #o: ChecksumResponderOptions;
  readonly #memo = new Map<string, Promise<string>>();
  readonly #memoEntries: number;
  readonly #concurrency: number;
  readonly #waiting: (() => void)[] = [];
  #active = 0;
  readonly #requests: RequestSubscription;
  /** Requests answered, and checksums actually computed (the rest came from the memo). */
  readonly stats = { requests: 0, computed: 0 };

  constructor(o: ChecksumResponderOptions) {
    this.#o = o;
    this.#requests = new RequestSubscription(o.nc, checksumSubject(o.workerId), (msg) => {
      void this.#answer(msg);
    });
    this.#memoEntries = o.memoEntries ?? 10_000;
    this.#concurrency = Math.max(1, o.concurrency ?? 4);
  }

  /** Subscribes to the worker's subject. */
  start(): void {
    this.#requests.start();
  }

  /**
   * Stops answering: once this resolves, the server knows (requests get no responders at once,
   * and their askers fall back).
   */
  stop(): Promise<void> {
    return this.#requests.stop();
  }

  /** The checksum of each spec inside a held result (what a request is answered with). */
  async checksums(resultId: string, deps: readonly ChecksumDepSpec[]): Promise<ChecksumEntry[]> {
    const snapshot = resultId === EMPTY_RESULT_ID ? undefined : this.#o.held.snapshotOf(resultId);
    if (resultId !== EMPTY_RESULT_ID && snapshot === undefined)
      throw new ChecksumResultUnknownError(resultId);
    return Promise.all(
      deps.map((d) =>
        this.#digest(resultId, snapshot, d).then(
          (digest): ChecksumEntry => ({ digest }),
          (e: unknown): ChecksumEntry => ({ error: replyError(e) }),
        ),
      ),
    );
  }

  async #answer(msg: Msg): Promise<void> {
    this.stats.requests++;
    let reply: ChecksumReply;
    try {
      const req = decodeChecksumRequest(msg.data);
      reply = { results: await this.checksums(req.resultId, req.deps) };
    } catch (e) {
      reply = { error: replyError(e) };
    }
    try {
      msg.respond(encodeChecksumJson(reply));
    } catch (e) {
      this.#o.onError?.(e); // the connection is closing
    }
  }

  #digest(resultId: string, snapshot: string | undefined, dep: ChecksumDepSpec): Promise<string> {
    const key = `${resultId}\0${JSON.stringify(normalizeChecksumDep(dep))}`;
    const known = this.#memo.get(key);
    if (known) {
      this.#memo.delete(key); // most recently used last
      this.#memo.set(key, known);
      return known;
    }
    const persisted = this.#o.persist?.get(key);
    if (persisted !== undefined) {
      const p = Promise.resolve(persisted);
      this.#memo.set(key, p);
      this.#trim();
      return p;
    }
    const p = this.#limited(async () => {
      this.stats.computed++;
      const entries =
        snapshot && dep.algorithm !== 'buildkit'
          ? await this.#o.held.manifest?.(snapshot)
          : undefined;
      if (entries) {
        // Only the root's own owner and mode are read from the tree.
        const fromManifest = await this.#o.held.read(snapshot, async (dir) => {
          const st = await lstat(dir);
          return manifestChecksum(entries, st, dep);
        });
        if (fromManifest !== undefined) {
          await this.#persist(key, fromManifest);
          return fromManifest;
        }
      }
      const digests = snapshot ? await this.#o.held.fileDigests?.(snapshot) : undefined;
      const known = digests
        ? (path: string, size: number): string | undefined => {
            const d = digests.get(path);
            return d && d.size === size ? d.digest.slice('sha256:'.length) : undefined;
          }
        : undefined;
      const digest =
        dep.algorithm === 'buildkit'
          ? await this.#o.held.read(snapshot, (dir) => {
              if (!buildkitChecksumSupported(dep))
                throw new KilnError(
                  'CHECKSUM_UNSUPPORTED',
                  "BuildKit's checksum of include or exclude patterns is not reproduced",
                );
              return buildkitChecksum(dir, dep.selectors, dep.followLinks, dep.wildcard);
            })
          : await this.#o.held.read(snapshot, (dir) => depChecksum(dir, dep, known));
      await this.#persist(key, digest);
      return digest;
    });
    this.#memo.set(key, p);
    p.catch(() => this.#memo.delete(key));
    this.#trim();
    return p;
  }

  #trim(): void {
    while (this.#memo.size > this.#memoEntries) {
      const oldest = this.#memo.keys().next().value;
      if (oldest === undefined) break;
      this.#memo.delete(oldest);
    }
  }

  /** A persisting failure only costs a recomputation after a restart. */
  async #persist(key: string, digest: string): Promise<void> {
    const store = this.#o.persist;
    if (!store) return;
    try {
      await store.set(key, digest);
      const keys = store.keys();
      for (const k of keys.slice(0, Math.max(0, keys.length - this.#memoEntries)))
        await store.delete(k);
    } catch (e) {
      this.#o.onError?.(e);
    }
  }

  async #limited<T>(fn: () => Promise<T>): Promise<T> {
    // A finishing computation hands its turn to the next waiter directly.
    if (this.#active >= this.#concurrency)
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    else this.#active++;
    try {
      return await fn();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#active--;
    }
  }
}
