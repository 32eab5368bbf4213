/**
 * The executor contract: one {@link OpExecutor} per op kind (source, exec, file, merge, diff) runs
 * one vertex on committed input snapshots and returns the committed snapshots of its outputs.
 * The task runner (`node/task-runner.ts`) builds the context of each task and drives them.
 */
import type { pb } from '@kiln/protocol';
import type { TaskLimits } from '../runtime/index.js';
import type { LocalSpec } from '../sources/local/local-source.js';
import type { RegistryCredentials } from '@kiln/registry';

/** What a build may ask of its client while it runs. */
export interface SessionProviders {
  /** Directories by local source name (`local://<name>`). */
  localDirs?: Readonly<Record<string, string>>;
  /**
   * A local source's directory fetched from a remote client (filtered by the spec's patterns);
   * wins over `localDirs`.
   */
  syncLocal?: (spec: LocalSpec) => Promise<string>;
  /**
   * A local source fetched from a remote client as a committed snapshot (shared, immutable: the
   * worker's kept copy of that context); wins over `syncLocal`.
   */
  localSnapshot?: (spec: LocalSpec) => Promise<string>;
  /** Secret values by id; undefined when the client has no such secret. */
  secrets?: (id: string) => Promise<Uint8Array | undefined>;
  /** Host path of an ssh agent socket by ssh id. */
  ssh?: (id: string) => Promise<string | undefined>;
  /**
   * The build's client's registry credentials for a host (BuildKit's session/auth), undefined
   * when it has none; never stored or logged.
   */
  credentials?: (host: string) => Promise<RegistryCredentials | undefined>;
}

/** Everything an executor gets for one vertex. */
export interface ExecutorContext {
  readonly digest: string;
  readonly op: pb.Op;
  readonly metadata: pb.IOpMetadata | undefined;
  /** The committed snapshot of each op input, in `op.inputs` order; undefined: empty. */
  readonly inputs: readonly (string | undefined)[];
  readonly session: SessionProviders;
  /** The task's cache namespace (its tenant's; '' when shared): cache mounts are kept per namespace. */
  readonly cacheNamespace?: string;
  /** The task's tenant limits (`Task.limits`), capped by the worker's own. */
  readonly tenantLimits?: TaskLimits;
  readonly signal: AbortSignal;
  /** Live output and status of the vertex. */
  log(stream: 1 | 2, data: Uint8Array): void;
}

/** Runs one kind of op. */
export interface OpExecutor {
  /** Runs the op; returns the committed snapshot of each output (undefined: empty). */
  exec(ctx: ExecutorContext): Promise<(string | undefined)[]>;
}
