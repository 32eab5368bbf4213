/**
 * The builds this scheduler knows: running ones, and finished ones for `retainMs` so that a
 * client can still read (or resume) their status. A Status call may come before its Solve (the
 * client opens the stream first): the build is then created pending and its Solve adopts it.
 */
import { BuildStatus } from './build-status.js';
import { BuildExistsError } from '../solver/errors.js';

export interface Build {
  readonly id: string;
  readonly status: BuildStatus;
  readonly abort: AbortController;
  state: 'pending' | 'running' | 'done';
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

  get(id: string): Build | undefined {
    return this.#builds.get(id)?.build;
  }

  /** The build for a Status reader: the known one, or a new pending one. */
  observe(id: string): Build {
    const known = this.#builds.get(id);
    if (known) return known.build;
    const e = this.#create(id);
    this.#expireLater(e, this.#pendingMs);
    return e.build;
  }

  /** Starts a build; throws BuildExistsError if it already ran or runs. */
  start(id: string): Build {
    const known = this.#builds.get(id);
    if (known && known.build.state !== 'pending') throw new BuildExistsError(id);
    const e = known ?? this.#create(id);
    clearTimeout(e.expiry);
    e.build.state = 'running';
    return e.build;
  }

  /** Marks the build finished: its status closes and it is forgotten after `retainMs`. */
  finish(id: string): void {
    const e = this.#builds.get(id);
    if (!e) return;
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

  #create(id: string): Entry {
    const build: Build = {
      id,
      status: new BuildStatus(this.#capacity),
      abort: new AbortController(),
      state: 'pending',
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
