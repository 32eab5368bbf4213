import type { TaskLimits } from './cgroups.js';

/**
 * Network of a container. `none`: a new network namespace with only `lo`. `host`: the host's.
 * `sandbox` (BuildKit's default): a namespace of its own on a NATed bridge, or the host's network
 * where the runtime was configured so or the bridge cannot be set up (see `OciRuntime.sandboxNetwork`).
 */
export type NetworkMode = 'sandbox' | 'host' | 'none';

/** `sandbox`: default capabilities, read-only /sys. `insecure`: all capabilities and devices, rw /sys. */
export type SecurityMode = 'sandbox' | 'insecure';

/** A mount into the container besides the rootfs and the system mounts. */
export type ContainerMount =
  | {
      type: 'bind';
      /** Host path (a directory, a file or a socket). */
      source: string;
      destination: string;
      readonly?: boolean;
    }
  | {
      type: 'tmpfs';
      destination: string;
      /** Bytes; 0 or absent means the kernel default (half of RAM). */
      size?: number;
      readonly?: boolean;
    };

/** One rlimit, e.g. `{ name: 'nofile', soft: 1024, hard: 4096 }`. */
export interface Ulimit {
  name: string;
  soft: number;
  hard: number;
}

export interface HostEntry {
  host: string;
  ip: string;
}

/** What to run, in the terms of BuildKit's executor.Meta. */
export interface ProcessSpec {
  args: string[];
  /** `KEY=value` entries; a default PATH is added when missing. */
  env?: string[];
  /** Working directory inside the container, created when missing. Default `/`. */
  cwd?: string;
  /** `name`, `uid`, `uid:gid`, `name:group`; resolved against the rootfs. Default root. */
  user?: string;
  /** Default `buildkitsandbox`. */
  hostname?: string;
  extraHosts?: HostEntry[];
  network?: NetworkMode;
  security?: SecurityMode;
  ulimits?: Ulimit[];
  /**
   * Cgroup parent; the task's cgroup is `<parent>/kiln/<id>` (default `<cgroupRoot>/<id>`, see
   * `OciRuntimeOptions`) and the container's `<that>/ctr`.
   */
  cgroupParent?: string;
  /** Exit codes that count as success. Default `[0]`. */
  validExitCodes?: number[];
  /** Also remove the created parents of mount stubs, not only the leaf (BuildKit's flag). */
  removeMountStubsRecursive?: boolean;
}

export interface RunSpec extends ProcessSpec {
  /** Host path of the container's root filesystem (a mounted snapshot). */
  rootfs: string;
  readonlyRootfs?: boolean;
  mounts?: ContainerMount[];
}

export type OutputStream = 'stdout' | 'stderr';

export interface RunOptions {
  /** Aborting kills the container (SIGKILL) and removes it; the run rejects with RUNTIME_ABORTED. */
  signal?: AbortSignal;
  /** Kill after this many milliseconds, as an abort (RUNTIME_ABORTED). */
  timeoutMs?: number;
  /**
   * Limits of this run, over the runtime's defaults (`OciRuntimeOptions.limits`); a field set to 0
   * lifts that limit. Exceeding one fails the run with `LimitExceededError`.
   */
  limits?: TaskLimits;
  /** Live output, chunk by chunk, as the process writes it. */
  onOutput?: (stream: OutputStream, chunk: Buffer) => void;
  /** How many lines of output to keep for errors. Default 20. */
  tailLines?: number;
}

export interface RunResult {
  containerId: string;
  exitCode: number;
  /** The last `tailLines` lines of stdout and stderr interleaved. */
  tail: string;
}
