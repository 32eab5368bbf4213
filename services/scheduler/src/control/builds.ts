/**
 * The builds this scheduler knows: running ones, and finished ones for `retainMs` so that a
 * client can still read (or resume) their status. A Status call may come before its Solve (the
 * client opens the stream first): the build is then created pending and its Solve adopts it.
 *
 * Every build belongs to a tenant: a tenant never sees another's build (`get` and `observe` answer
 * as if it did not exist), and a Solve never adopts a pending build another tenant observes (that
 * reader's stream ends, as for a build that never started).
 */
import { randomUUID } from 'node:crypto';
import { BuildStatus } from './build-status.js';
import { BuildExistsError } from '../solver/errors.js';

export interface Build {
  readonly id: string;
  /** The tenant of the caller that solved (or, while pending, observes) it. */
  readonly tenant: string;
  readonly status: BuildStatus;
  readonly abort: AbortController;
  state: 'pending' | 'running' | 'done';
  /**
   * Its client's Solve call dropped (the build was cancelled for it): a new Solve of the id, the
   * same client resending after a broken connection, starts it afresh once this one has ended.
   */
  clientGone?: boolean;
  /** Which build of this id (a random id): a Status reader of another starts from seq 0. */
  readonly epoch: string;
}

interface Entry {
  build: Build;
  expiry?: NodeJS.Timeout;
}

export interface BuildRegistryOptions {
  /** How long a finished (or never started) build stays readable. Default 10 min. */
  retainMs?: number;
  /** Status frames kept per build. Default 10,000. */
  statusCapacity?: number;
  /**
   * How long a build that a Status reader asked for may take to start. Default 30 s; then its
   * readers end (the build is unknown: never solved here, or lost in a scheduler restart).
   */
  pendingMs?: number;
}

export class BuildRegistry {
  readonly #builds = new Map<string, Entry>();
  readonly #retainMs: number;
  readonly #capacity: number;
  readonly #pendingMs: number;

  constructor(o: BuildRegistryOptions = {}) {
    this.#retainMs = o.retainMs ?? 600_000;
    this.#pendingMs = o.pendingMs ?? 30_000;
    this.#capacity = o.statusCapacity ?? 10_000;
  }

  /** The tenant's build `id`, if known. */
  get(id: string, tenant: string): Build | undefined {
    const b = this.#builds.get(id)?.build;
    return b?.tenant === tenant ? b : undefined;
  }

  /**
   * The build for a Status reader of `tenant`: the known one, or a new pending one; undefined
   * when the id is another tenant's.
   */
  observe(id: string, tenant: string): Build | undefined {
    const known = this.#builds.get(id);
    if (known) return known.build.tenant === tenant ? known.build : undefined;
    const e = this.#create(id, tenant);
    this.#expireLater(e, this.#pendingMs);
    return e.build;
  }

  /**
   * Starts a build; throws BuildExistsError if it already ran or runs. A build its client left
   * (`clientGone`) is started afresh once it has ended (until then the error is retryable).
   */
  start(id: string, tenant: string): Build {
    let known = this.#builds.get(id);
    if (known?.build.clientGone && known.build.tenant === tenant) {
      if (known.build.state !== 'done') throw new BuildExistsError(id, true);
      clearTimeout(known.expiry);
      known = undefined;
    }
    if (known && known.build.state !== 'pending') throw new BuildExistsError(id);
    if (known && known.build.tenant !== tenant) {
      // Another tenant's reader waits for this id: its stream ends, it never sees this build.
      clearTimeout(known.expiry);
      known.build.status.close();
      known = undefined;
    }
    const e = known ?? this.#create(id, tenant);
    clearTimeout(e.expiry);
    e.build.state = 'running';
    return e.build;
  }

  /**
   * Marks the build finished: its status closes and it is forgotten after `retainMs`. `build`:
   * only if it is still the one of this id (not one started afresh since).
   */
  finish(id: string, build?: Build): void {
    const e = this.#builds.get(id);
    if (!e || (build && e.build !== build)) return;
    e.build.state = 'done';
    e.build.status.close();
    this.#expireLater(e, this.#retainMs);
  }

  running(): Build[] {
    return [...this.#builds.values()].map((e) => e.build).filter((b) => b.state === 'running');
  }

  close(): void {
    for (const e of this.#builds.values()) {
      clearTimeout(e.expiry);
      e.build.abort.abort();
      e.build.status.close();
    }
  }

  #create(id: string, tenant: string): Entry {
    const build: Build = {
      id,
      tenant,
      status: new BuildStatus(this.#capacity),
      abort: new AbortController(),
      state: 'pending',
      epoch: randomUUID(),
    };
    const e: Entry = { build };
    this.#builds.set(id, e);
    return e;
  }

  #expireLater(e: Entry, ms: number): void {
    clearTimeout(e.expiry);
    e.expiry = setTimeout(() => {
      if (this.#builds.get(e.build.id) !== e) return;
      this.#builds.delete(e.build.id);
      e.build.status.close();
    }, ms);
    e.expiry.unref();
  }
}
