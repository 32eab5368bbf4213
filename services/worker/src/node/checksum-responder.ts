/**
 * The worker's side of selector-level content keys: it answers `kiln.checksum.<workerId>`
 * (`@kiln/bus` checksum.ts) for the results it holds. Given a result id and dep specs (selectors,
 * wildcard, followLinks, include/exclude patterns), it mounts the held snapshot read-only and
 * returns each spec's content checksum ({@link depChecksum}, the value the local solver keys
 * with). The scheduler keys a COPY (or a read-only subpath mount) by that digest instead of the
 * whole input's result id, so a change elsewhere in the input leaves the vertex cached.
 *
 * - Results are immutable: digests are memoized per (result id, spec), at most `memoEntries`
 *   (least recently used go first); a failed computation is not remembered.
 * - A result this worker does not hold, a malformed request, or a selector that cannot be
 *   checksummed (a missing path) is an error reply, never a crash; the asker then keys by the
 *   result id.
 * - At most `concurrency` checksums are computed at once; the others wait their turn.
 */
import type { NatsConnection, Msg, Subscription } from '@nats-io/transport-node';
import {
  ChecksumResultUnknownError,
  checksumSubject,
  decodeChecksumRequest,
  encodeChecksumJson,
  normalizeChecksumDep,
} from '@kiln/bus';
import type { ChecksumDepSpec, ChecksumEntry, ChecksumReply, ChecksumReplyError } from '@kiln/bus';
import { KilnError } from '@kiln/protocol';
import { depChecksum } from '../cache/dep-checksum.js';
import { EMPTY_RESULT_ID } from './result-id.js';

/** What the responder needs of the worker: its held results and a read-only view of them. */
export interface HeldSnapshots {
  /** The committed snapshot of a held result; undefined when not held. */
  snapshotOf(resultId: string): string | undefined;
  /** Shows a snapshot (undefined: the empty tree) read-only for the duration of `fn`. */
  read<T>(snapshot: string | undefined, fn: (dir: string) => Promise<T>): Promise<T>;
}

export interface ChecksumResponderOptions {
  nc: NatsConnection;
  workerId: string;
  held: HeldSnapshots;
  /** Memoized digests kept; default 10,000. */
  memoEntries?: number;
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
  #sub: Subscription | undefined;
  /** Requests answered, and checksums actually computed (the rest came from the memo). */
  readonly stats = { requests: 0, computed: 0 };

  constructor(o: ChecksumResponderOptions) {
    this.#o = o;
    this.#memoEntries = o.memoEntries ?? 10_000;
    this.#concurrency = Math.max(1, o.concurrency ?? 4);
  }

  /** Subscribes to the worker's checksum subject. */
  start(): void {
    if (this.#sub) return;
    this.#sub = this.#o.nc.subscribe(checksumSubject(this.#o.workerId), {
      callback: (err, msg) => {
        if (!err) void this.#answer(msg);
      },
    });
  }

  /**
   * Stops answering: once this resolves, the server knows (requests get no responders at once,
   * and their askers fall back).
   */
  async stop(): Promise<void> {
    if (!this.#sub) return;
    this.#sub.unsubscribe();
    this.#sub = undefined;
    if (!this.#o.nc.isClosed()) await this.#o.nc.flush().catch(() => undefined);
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
    const p = this.#limited(() => {
      this.stats.computed++;
      return this.#o.held.read(snapshot, (dir) => depChecksum(dir, dep));
    });
    this.#memo.set(key, p);
    p.catch(() => this.#memo.delete(key));
    while (this.#memo.size > this.#memoEntries) {
      const oldest = this.#memo.keys().next().value;
      if (oldest === undefined) break;
      this.#memo.delete(oldest);
    }
    return p;
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
