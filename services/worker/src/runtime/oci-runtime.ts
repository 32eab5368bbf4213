import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { constants, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import {
  chmod,
  copyFile,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  rename,
  rm,
  writeFile,
} from 'node:fs/promises';
import { join, posix } from 'node:path';
import { promisify } from 'node:util';
import { BridgeNetwork } from './bridge.js';
import { SLIRP_SUBNET, SlirpRouter, hostAddresses } from './slirp.js';
import type { BridgeAttachment, BridgeOptions } from './bridge.js';
import { TaskCgroups } from './cgroups.js';
import type { TaskLimits } from './cgroups.js';
import { ExecError, LimitExceededError, RuntimeError, RuntimeErrorCode } from './errors.js';
import { hostsFile, resolvConf } from './hosts.js';
import { mountStubsCleaner } from './mount-stubs.js';
import { resolveInRoot } from '@kiln/layers';
import { SECCOMP_BPF_ANNOTATION, SeccompBpfCache } from './seccomp-bpf.js';
import type { OciSeccomp } from './seccomp.js';
import {
  DEFAULT_CAPABILITIES,
  boundingCapabilities,
  generateSpec,
  hostDevices,
  seccompOf,
} from './spec.js';
import type { OciSpec } from './spec.js';
import { LineTail } from './tail.js';
import type { RunOptions, RunResult, RunSpec } from './types.js';
import { resolveUser } from './user.js';
import { currentUserNamespace } from './userns.js';
import type { UserNamespace } from './userns.js';
import { withCleanup } from '@kiln/protocol';
import { spawnProcess } from '@kiln/sys';
import type { SpawnedProcess } from '@kiln/sys';

const execFileP = promisify(execFile);

interface KilnErrorLike {
  details: Record<string, unknown>;
}

/** `268435456` as `256 MiB`. */
function formatBytes(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && v % 1024 === 0 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v} ${units[u]!}`;
}

export type RuntimeName = 'crun' | 'runc';

export interface OciRuntimeOptions {
  /** Bundles and the runtime's own state live here (`bundles/`, `<runtime>-state/`). */
  stateDir: string;
  /** `auto` (default): crun when a probe container runs, else runc. */
  runtime?: RuntimeName | 'auto';
  /** The runtime's executable; default its name on PATH. */
  binary?: string;
  /**
   * What the `sandbox` network is. `auto` (default): a bridged, NATed namespace per container when
   * the bridge can be set up (iproute2, iptables), else the host's network (see `sandboxNetwork`);
   * in a user namespace (rootless), the bridge behind slirp4netns, else a namespace with only
   * loopback. `bridge`: the bridge or fail.
   * `host`: the host's network, as BuildKit's `--oci-worker-net=host`.
   */
  sandboxNetwork?: 'auto' | 'bridge' | 'host';
  bridge?: BridgeOptions;
  /** Limits of every run unless its `RunOptions.limits` say otherwise. Default none. */
  limits?: TaskLimits;
  /**
   * Addresses the `sandbox` network may not reach besides the host's own (the farm's control
   * plane: scheduler, NATS, store), as IPv4 addresses, CIDRs or host names.
   */
  sandboxDeny?: readonly string[];
  /**
   * Where runs without a cgroup parent get their cgroups: `<cgroupRoot>/<container id>` in the
   * cgroup v2 tree (or in each v1 hierarchy). Default `/kiln`.
   */
  cgroupRoot?: string;
}

/** Distinct shared `/etc` files one runtime makes at most (see `OciRuntime.sharedFile`). */
const SHARED_FILES_MAX = 64;

/**
 * Waits for every promise, and rejects with the first failure once all have settled (so that
 * the caller's cleanups see everything that was made); resolves with their values otherwise.
 */
async function allOrFirstError<T extends readonly unknown[]>(
  ps: T,
): Promise<{ -readonly [K in keyof T]: Awaited<T[K]> }> {
  const settled = await Promise.allSettled(ps);
  const failed = settled.find((r) => r.status === 'rejected');
  if (failed !== undefined) throw failed.reason;
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as {
    -readonly [K in keyof T]: Awaited<T[K]>;
  };
}

/** A static executable that runs `true` when called so (busybox-static). */
const PROBE_BINARY = '/bin/busybox';

const SIGNALS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGABRT: 6,
  SIGKILL: 9,
  SIGSEGV: 11,
  SIGPIPE: 13,
  SIGTERM: 15,
};

/**
 * Runs processes in containers with crun or runc: one bundle per run under the state dir, a unique
 * container id, `<runtime> run` in the foreground with stdout/stderr piped. The caller owns the
 * rootfs (a mounted snapshot); the runtime creates the working directory in it and removes the
 * mount stubs it made afterwards. A run that is aborted or times out is killed and deleted before
 * the call returns. Safe to use concurrently.
 */
export class OciRuntime {
  private hostCaps: string[] | undefined;
  private bridge: BridgeNetwork | undefined;
  /** In a user namespace: the bridge's namespace and its way out (see SlirpRouter). */
  private slirp: SlirpRouter | undefined;
  /** What the `sandbox` network mode gives here: `bridge`, `host` or (rootless) `none`. */
  sandboxNetwork: 'bridge' | 'host' | 'none' = 'host';
  /** Why `auto` fell back to the host network (or, rootless, to none), if it did. */
  sandboxFallbackReason: string | undefined;
  /**
   * This process runs in a user namespace that does not map every id (a rootless worker, or one
   * in a remapped namespace): its containers live in it, without the host's network or cgroups
   * unless they were delegated. Undefined: the initial namespace.
   */
  userNamespace: UserNamespace | undefined;
  /** The machine's cgroups, where limits are applied; undefined when it has none usable. */
  cgroups: TaskCgroups | undefined;
  /** Every run's limits unless its options say otherwise. */
  limits: TaskLimits = {};
  private cgroupRoot = '/kiln';
  /** Releases of finished runs still under way (see {@link settled}). */
  readonly #releasing = new Set<Promise<void>>();
  /** Files shared by runs (see {@link sharedFile}), by name. */
  readonly #shared = new Map<string, Promise<string>>();
  /** crun only: the sandbox's seccomp filter compiled once, passed ready-made to each run. */
  readonly seccompBpf: SeccompBpfCache | undefined;

  private constructor(
    readonly name: RuntimeName,
    private readonly binary: string,
    private readonly stateDir: string,
  ) {
    if (name === 'crun') this.seccompBpf = new SeccompBpfCache((s) => this.compileSeccomp(s));
  }

  /** The runtime's global flags (its state root), shared by every command. */
  private get rootArgs(): string[] {
    return ['--root', join(this.stateDir, `${this.name}-state`)];
  }

  /**
   * Kills and deletes the containers a dead process left in `stateDir` (a worker killed with -9
   * leaves its containers running) and removes their bundles, without probing a runtime: a worker
   * starting on the state dir calls it, so nothing of its predecessor outlives its start, even
   * when no build ever needs a container again. A state dir without containers costs a readdir.
   * The bridge's namespaces and veths whose process is gone (on the whole machine: they are
   * leased by pid) go too, for the same reason.
   */
  static async sweepLeftovers(stateDir: string): Promise<void> {
    for (const name of ['crun', 'runc'] as const) {
      const ids = await readdir(join(stateDir, `${name}-state`)).catch(() => [] as string[]);
      if (ids.length > 0) await new OciRuntime(name, name, stateDir).sweep();
    }
    await BridgeNetwork.sweepDead();
  }

  static async open(opts: OciRuntimeOptions): Promise<OciRuntime> {
    await mkdir(join(opts.stateDir, 'bundles'), { recursive: true });
    const wanted = opts.runtime ?? 'auto';
    const candidates: RuntimeName[] = wanted === 'auto' ? ['crun', 'runc'] : [wanted];
    const failures: string[] = [];
    for (const name of candidates) {
      const rt = new OciRuntime(
        name,
        wanted === 'auto' ? name : (opts.binary ?? name),
        opts.stateDir,
      );
      const err = await rt.probe();
      if (err === undefined) {
        rt.userNamespace = await currentUserNamespace();
        await rt.setupCgroups(opts);
        await rt.sweep();
        // The sandbox's filter, compiled once here (a failure only means runs pass the profile).
        rt.hostCaps = await boundingCapabilities();
        await rt.seccompBpf?.get(
          seccompOf(DEFAULT_CAPABILITIES.filter((c) => rt.hostCaps!.includes(c))),
        );
        await rt.setupSandboxNetwork(opts);
        return rt;
      }
      failures.push(`${name}: ${err}`);
    }
    throw new RuntimeError(
      RuntimeErrorCode.Unavailable,
      `no usable OCI runtime (${failures.join('; ')})`,
    );
  }

  private async setupCgroups(opts: OciRuntimeOptions): Promise<void> {
    this.limits = { ...opts.limits };
    this.cgroupRoot = posix.join('/', opts.cgroupRoot ?? 'kiln');
    const l = this.limits;
    try {
      this.cgroups = await TaskCgroups.detect(this.userNamespace !== undefined);
      if (this.userNamespace !== undefined) await this.cgroups.checkWritable(this.cgroupRoot);
    } catch (err) {
      this.cgroups = undefined;
      if (l.memoryBytes || l.pids || l.cpuShares) throw err;
    }
  }

  private async setupSandboxNetwork(opts: OciRuntimeOptions): Promise<void> {
    const mode = opts.sandboxNetwork ?? 'auto';
    if (mode === 'host') return;
    const deny = [...(opts.bridge?.deny ?? []), ...(opts.sandboxDeny ?? [])];
    if (this.userNamespace !== undefined) {
      await this.setupSlirpNetwork(opts, deny, mode);
      return;
    }
    try {
      this.bridge = await BridgeNetwork.setup({ ...opts.bridge, deny });
      this.sandboxNetwork = 'bridge';
    } catch (err) {
      // A bridge that exists but cannot be isolated (iptables refused a rule, a denied host does
      // not resolve) fails the runtime: the host network would reach even more.
      const isolation = err instanceof RuntimeError && err.details.isolation === true;
      if (mode === 'bridge' || isolation) throw err;
      this.sandboxFallbackReason = (err as Error).message;
    }
  }

  /**
   * In a user namespace, the host's network namespace is not this namespace's: no bridge can be
   * made there. The bridge is made in a namespace of the worker's own whose way out is
   * slirp4netns, refusing the host's own addresses (and slirp's gateway, the host's loopback)
   * besides the denied ones. Where that cannot be set up (no slirp4netns, no /dev/net/tun),
   * `auto` gives RUNs only loopback: never the worker's own network, which reaches the control
   * plane.
   */
  private async setupSlirpNetwork(
    opts: OciRuntimeOptions,
    deny: string[],
    mode: 'auto' | 'bridge',
  ): Promise<void> {
    try {
      this.slirp = await SlirpRouter.start();
      this.bridge = await BridgeNetwork.setup({
        ...opts.bridge,
        netns: this.slirp.netns,
        // Leases are this worker's alone: its namespaces live on its own /run/netns.
        ipamDir: join(opts.stateDir, 'ipam'),
        deny: [...deny, ...(await hostAddresses()), SLIRP_SUBNET],
      });
      this.sandboxNetwork = 'bridge';
    } catch (err) {
      await this.slirp?.close();
      this.slirp = undefined;
      const isolation = err instanceof RuntimeError && err.details.isolation === true;
      if (mode === 'bridge' || isolation) throw err;
      this.sandboxNetwork = 'none';
      this.sandboxFallbackReason = `the worker runs in a user namespace (${this.userNamespace!.describe()}) and its sandbox network cannot be set up (${(err as Error).message}): RUNs get only loopback`;
    }
  }

  /**
   * Runs `true` of a static busybox (the machine setup installs busybox-static) in a throwaway
   * bundle; undefined when it works, else the runtime's first error line.
   */
  private async probe(): Promise<string | undefined> {
    try {
      await this.withProbe({}, async (bundle, id) => {
        await execFileP(this.binary, [...this.rootArgs, 'run', '--bundle', bundle, id], {
          timeout: 30_000,
        });
      });
      return undefined;
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      return (e.stderr?.trim() || e.message).split('\n')[0];
    }
  }

  /**
   * The raw filter crun makes of `seccomp`: a probe container is created (not started) with the
   * profile, and the `seccomp.bpf` crun wrote into its state is read before it is deleted.
   */
  private compileSeccomp(seccomp: OciSeccomp): Promise<Buffer> {
    return this.withProbe({ seccomp }, async (bundle, id) => {
      // The created container's process holds crun's stdio until it is deleted: no pipes to wait on.
      const log = join(bundle, 'create.log');
      const child = spawn(
        this.binary,
        [...this.rootArgs, `--log=file:${log}`, 'create', '--bundle', bundle, id],
        { stdio: 'ignore' },
      );
      const code = await new Promise<number | null>((resolve, reject) => {
        child.once('error', reject);
        child.once('exit', resolve);
      });
      if (code !== 0) {
        const why = (await readFile(log, 'utf8').catch(() => '')).trim();
        throw new Error(`${this.name} create exited with ${code}: ${why}`);
      }
      return readFile(join(this.stateDir, `${this.name}-state`, id, 'seccomp.bpf'));
    });
  }

  /**
   * `fn` on a throwaway bundle whose rootfs holds a static `true` (with `linux` added to its
   * spec) and a container id; the container and the bundle are removed afterwards.
   */
  private async withProbe<T>(
    linux: Record<string, unknown>,
    fn: (bundle: string, id: string) => Promise<T>,
  ): Promise<T> {
    const bundle = await mkdtemp(join(this.stateDir, 'bundles', 'probe-'));
    const id = `kiln-probe-${randomBytes(6).toString('hex')}`;
    const spec = {
      ociVersion: '1.0.2',
      process: {
        terminal: false,
        user: { uid: 0, gid: 0 },
        args: ['/true'],
        env: ['PATH=/'],
        cwd: '/',
      },
      root: { path: join(bundle, 'rootfs'), readonly: false },
      mounts: [
        {
          destination: '/proc',
          type: 'proc',
          source: 'proc',
          options: ['nosuid', 'noexec', 'nodev'],
        },
      ],
      linux: {
        namespaces: [{ type: 'pid' }, { type: 'mount' }, { type: 'ipc' }, { type: 'uts' }],
        ...linux,
      },
    };
    return withCleanup(
      async () => {
        await mkdir(join(bundle, 'rootfs', 'proc'), { recursive: true });
        await mkdir(join(bundle, 'rootfs', 'dev'));
        await copyFile(PROBE_BINARY, join(bundle, 'rootfs', 'true'), constants.COPYFILE_FICLONE);
        await chmod(join(bundle, 'rootfs', 'true'), 0o755);
        await writeFile(join(bundle, 'config.json'), JSON.stringify(spec));
        return fn(bundle, id);
      },
      () => this.delete(id),
      () => rm(bundle, { recursive: true, force: true }),
    );
  }

  /**
   * Removes what a previous process left in this state dir (it died mid-run): its containers are
   * killed and deleted, its bundles removed. One runtime instance owns a state dir.
   */
  private async sweep(): Promise<void> {
    for (const id of await this.list()) {
      await execFileP(this.binary, [...this.rootArgs, 'kill', id, 'KILL']).catch(() => undefined);
      await this.delete(id);
    }
    await this.cgroups?.sweep(this.cgroupRoot);
    const bundles = join(this.stateDir, 'bundles');
    for (const name of await readdir(bundles).catch(() => [] as string[])) {
      if (name.startsWith('probe-')) continue;
      await BridgeNetwork.detach(name).catch(() => undefined);
      await this.cgroups?.release(posix.join(this.cgroupRoot, name)).catch(() => undefined);
      await rm(join(bundles, name), { recursive: true, force: true });
    }
  }

  /** Deletes the sandbox network's pooled namespaces (nothing else is held between runs). */
  async close(): Promise<void> {
    await this.bridge?.close();
    await this.slirp?.close();
  }

  /** Ids of the containers the runtime knows in this state dir (normally none between runs). */
  async list(): Promise<string[]> {
    const { stdout } = await execFileP(this.binary, [...this.rootArgs, 'list', '-q']);
    return stdout.split('\n').filter((l) => l.trim() !== '');
  }

  /** Force-deletes a container; a missing one is not an error. */
  private async delete(id: string): Promise<void> {
    try {
      await execFileP(this.binary, [...this.rootArgs, 'delete', '-f', id]);
    } catch (err) {
      const msg = (err as { stderr?: string }).stderr ?? '';
      if (!/not exist|not found|no such/i.test(msg)) {
        throw new RuntimeError(RuntimeErrorCode.Io, `deleting container ${id}: ${msg.trim()}`, {
          cause: err,
        });
      }
    }
  }

  /**
   * Runs `spec` to completion. Resolves with the exit code when it is valid (0 unless
   * `validExitCodes` says otherwise); rejects with {@link ExecError} for another exit code, with
   * {@link RuntimeError} when the container cannot start or the run is aborted.
   */
  async run(spec: RunSpec, opts: RunOptions = {}): Promise<RunResult> {
    opts.signal?.throwIfAborted();
    const id = `kiln-${randomBytes(8).toString('hex')}`;
    const bundle = join(this.stateDir, 'bundles', id);
    const limits: TaskLimits = { ...this.limits, ...opts.limits };
    if (this.cgroups === undefined && (limits.memoryBytes || limits.pids || limits.cpuShares)) {
      throw new RuntimeError(
        RuntimeErrorCode.Unavailable,
        `this run has a memory, pids or CPU limit (${JSON.stringify(limits)}) and this worker has no cgroups to apply it${this.userNamespace ? ' (it runs in a user namespace without a delegated cgroup)' : ''}`,
        { details: { limits: JSON.stringify(limits) } },
      );
    }
    let group: string | undefined;
    let attachment: BridgeAttachment | undefined;
    let cleanStubs: (() => Promise<void>) | undefined;
    let config: OciSpec | undefined;
    // The run's own error is what is reported; a cleanup failing after it is attached to it.
    return withCleanup(
      async () => {
        const parent = spec.cgroupParent ?? '';
        // The container's bundle, cgroup, network namespace and spec do not depend on each
        // other: made at once, each waits for its own system calls only (they were ~12 ms in a
        // row per RUN, before the container).
        const cgroup = async (): Promise<string | undefined> => {
          // A systemd slice: the runtime's own, without limits.
          if (parent.includes('.slice') && parent.endsWith(':')) return `${parent}${id}`;
          if (this.cgroups === undefined) return undefined;
          group =
            parent === '' ? posix.join(this.cgroupRoot, id) : posix.join('/', parent, 'kiln', id);
          return this.cgroups.create(group, limits);
        };
        const specAndStubs = async (): Promise<OciSpec> => {
          const c = await this.prepare(id, bundle, spec);
          // Every mount of the finalized spec, /proc, /dev and /sys included: a mount point the
          // runtime had to create is not part of the result (BuildKit's MountStubsCleanerForSpec).
          if (!spec.readonlyRootfs)
            cleanStubs = await mountStubsCleaner(
              spec.rootfs,
              c.mounts.map((m) => m.destination),
              spec.removeMountStubsRecursive ?? false,
            );
          return c;
        };
        const sandbox = (spec.network ?? 'sandbox') === 'sandbox' && this.bridge !== undefined;
        // One directory: made at once (a thread-pool round trip costs more than the mkdir).
        mkdirSync(bundle, { recursive: true });
        const [cgroupsPath, made] = await allOrFirstError([
          cgroup(),
          specAndStubs(),
          sandbox ? this.bridge!.attach(id).then((a) => void (attachment = a)) : undefined,
        ] as const);
        config = made;
        if (cgroupsPath !== undefined) config.linux.cgroupsPath = cgroupsPath;
        if (attachment !== undefined)
          config.linux.namespaces.push({ type: 'network', path: attachment.nsPath });
        // A few KiB into the page cache: one call, not three thread-pool round trips.
        writeFileSync(join(bundle, 'config.json'), JSON.stringify(config));
        try {
          return await this.start(id, bundle, spec, opts, limits.timeMs || undefined);
        } catch (err) {
          throw group === undefined ? err : await this.limitError(err, group, limits, spec);
        }
      },
      () => cleanStubs?.(),
      // Reusable after a container without CAP_NET_ADMIN (it could not change the namespace).
      () =>
        attachment?.release(
          config !== undefined && !config.process.capabilities?.bounding?.includes('CAP_NET_ADMIN'),
        ),
      // After the run's result, off its critical path (the container is gone by then; the
      // group's counters were read already): a group that cannot be removed yet, or a bundle
      // left by a process that dies meanwhile, is the next open's sweep.
      () =>
        this.#release(async () => {
          if (group !== undefined) await this.cgroups?.release(group).catch(() => undefined);
          await rm(bundle, { recursive: true, force: true });
        }),
    );
  }

  #release(fn: () => Promise<void>): void {
    const p = fn()
      .catch(() => undefined)
      .finally(() => this.#releasing.delete(p));
    this.#releasing.add(p);
  }

  /**
   * Resolves when the runs that returned so far have released their cgroup and bundle (done in
   * the background once a run has its result).
   */
  async settled(): Promise<void> {
    while (this.#releasing.size > 0) await Promise.all([...this.#releasing]);
  }

  /**
   * `err` as a {@link LimitExceededError} when the run's cgroup says a limit stopped it: an OOM
   * kill at the memory limit, then forks refused at the pids limit (a process that fails after
   * them, or one killed at the time limit while forking in vain); else `err` as it is.
   */
  private async limitError(
    err: unknown,
    group: string,
    limits: TaskLimits,
    spec: RunSpec,
  ): Promise<unknown> {
    const timedOut = err instanceof LimitExceededError && err.limit === 'time';
    if (!(err instanceof ExecError) && !timedOut) return err;
    const ev = await this.cgroups!.events(group);
    const exitCode = err instanceof ExecError ? err.exitCode : 137;
    const tail = err instanceof ExecError ? err.tail : String(err.details.tail ?? '');
    const what = `process ${JSON.stringify(spec.args.join(' '))}`;
    const details = { exitCode, tail, ...(err as KilnErrorLike).details };
    const oom = ev.oomKills > 0 || (ev.memoryLimitHits > 0 && exitCode === 137);
    if (limits.memoryBytes && oom) {
      return new LimitExceededError(
        'memory',
        limits.memoryBytes,
        `${what} was killed at its memory limit (${formatBytes(limits.memoryBytes)})`,
        { cause: err, details },
      );
    }
    if (limits.pids && ev.pidsLimitHits > 0) {
      const after = timedOut ? `, then killed at its time limit (${limits.timeMs ?? 0} ms)` : '';
      return new LimitExceededError(
        'pids',
        limits.pids,
        `${what} reached its pids limit (${limits.pids} processes), where forks fail${after}`,
        { cause: err, details },
      );
    }
    return err;
  }

  /**
   * A read-only file of the runs' `/etc` (`hosts`, `resolv.conf`) with `content`, shared by every
   * run that has the same: `<stateDir>/shared/<name>-<digest>`, written once per process (temp
   * file, rename) instead of two files in each bundle. Undefined once {@link SHARED_FILES_MAX}
   * different ones were made (runs then write their own).
   */
  private sharedFile(name: string, content: string): Promise<string | undefined> {
    const key = `${name}-${createHash('sha256').update(content).digest('hex').slice(0, 32)}`;
    let p = this.#shared.get(key);
    if (p === undefined) {
      if (this.#shared.size >= SHARED_FILES_MAX) return Promise.resolve(undefined);
      const dir = join(this.stateDir, 'shared');
      const path = join(dir, key);
      p = (async () => {
        await mkdir(dir, { recursive: true });
        const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
        await writeFile(tmp, content, { mode: 0o644 });
        await rename(tmp, path);
        return path;
      })();
      // A failed write is tried again by the next run.
      p.catch(() => this.#shared.delete(key));
      this.#shared.set(key, p);
    }
    return p;
  }

  /**
   * The container's spec (without its cgroup and network namespace, which `run` adds). Its
   * `/etc/hosts` and `/etc/resolv.conf` are files shared by the runs that have the same ones
   * (see {@link sharedFile}), except for an `insecure` run, which gets its own in its bundle: a
   * privileged container could remount its read-only bind writable.
   */
  private async prepare(id: string, bundle: string, spec: RunSpec): Promise<OciSpec> {
    const user = await resolveUser(spec.rootfs, spec.user);
    const cwd = posix.join('/', spec.cwd ?? '');
    if (!spec.readonlyRootfs) {
      const dir = await resolveInRoot(spec.rootfs, cwd);
      // Most working directories exist: a cached lookup, not a thread-pool round trip.
      if (!existsSync(dir)) await mkdir(dir, { recursive: true, mode: 0o755 });
    }
    const asked = spec.network ?? 'sandbox';
    const network = asked === 'sandbox' && this.sandboxNetwork === 'none' ? 'none' : asked;
    const security = spec.security ?? 'sandbox';
    const hostname =
      spec.hostname === undefined || spec.hostname === '' ? undefined : spec.hostname;
    const file = async (name: 'hosts' | 'resolv.conf', content: string): Promise<string> => {
      if (security === 'sandbox') {
        const shared = await this.sharedFile(name, content);
        if (shared !== undefined) return shared;
      }
      await writeFile(join(bundle, name), content);
      return join(bundle, name);
    };
    const [resolvPath, hostsPath] = await Promise.all([
      file(
        'resolv.conf',
        resolvConf(
          network === 'host' || (network === 'sandbox' && this.bridge === undefined)
            ? 'host'
            : 'none',
        ),
      ),
      file('hosts', hostsFile(hostname ?? 'buildkitsandbox', spec.extraHosts)),
    ]);
    const input: Parameters<typeof generateSpec>[0] = {
      id,
      rootfs: spec.rootfs,
      readonlyRootfs: spec.readonlyRootfs ?? false,
      args: spec.args,
      env: spec.env ?? [],
      cwd,
      user,
      hostname,
      network,
      security,
      ulimits: spec.ulimits ?? [],
      cgroupsPath: undefined,
      resolvConf: resolvPath,
      hosts: hostsPath,
      mounts: spec.mounts ?? [],
    };
    this.hostCaps ??= await boundingCapabilities();
    input.hostCapabilities = this.hostCaps;
    if (security === 'insecure') input.devices = await hostDevices();
    const config = generateSpec(input);
    const seccomp = config.linux.seccomp;
    const bpf = seccomp && (await this.seccompBpf?.get(seccomp));
    if (bpf) {
      // The same filter, compiled already (see SeccompBpfCache).
      delete config.linux.seccomp;
      config.annotations = { ...config.annotations, [SECCOMP_BPF_ANNOTATION]: bpf };
    }
    return config;
  }

  private start(
    id: string,
    bundle: string,
    spec: RunSpec,
    opts: RunOptions,
    timeLimitMs: number | undefined,
  ): Promise<RunResult> {
    const tail = new LineTail(opts.tailLines ?? 20);
    const logFile = join(bundle, 'runtime.log');
    const logArgs =
      this.name === 'crun' ? [`--log=file:${logFile}`] : ['--log', logFile, '--log-format', 'json'];
    const startFailed = (err: unknown): RuntimeError =>
      new RuntimeError(
        RuntimeErrorCode.StartFailed,
        `spawning ${this.binary}: ${(err as Error).message}`,
        { cause: err },
      );
    let child: SpawnedProcess;
    try {
      // posix_spawn, not child_process.spawn: a fork of this large process blocks the event loop
      // ~15-25 ms per container start (every other task of the worker waits), and the spawn
      // waits for the runtime's exec on a thread of its own, not here. Its own session:
      // a signal to the caller's group (Ctrl-C, a drain's SIGTERM to the group) must not reach
      // the container; the runtime stops it itself (abort, timeout).
      child = spawnProcess(this.binary, [
        ...this.rootArgs,
        ...logArgs,
        'run',
        '--bundle',
        bundle,
        id,
      ]);
    } catch (err) {
      return Promise.reject(startFailed(err));
    }
    child.stdout.on('data', (c: Buffer) => {
      tail.push(c);
      opts.onOutput?.('stdout', c);
    });
    child.stderr.on('data', (c: Buffer) => {
      tail.push(c);
      opts.onOutput?.('stderr', c);
    });

    let aborted: 'signal' | 'timeout' | 'limit' | undefined;
    let killing: Promise<void> | undefined;
    let exited = false;
    const kill = (why: 'signal' | 'timeout' | 'limit'): void => {
      if (aborted !== undefined || exited) return;
      aborted = why;
      killing = (async () => {
        // The container may not exist yet: retry until it is killed or the run is over. If the
        // runtime keeps refusing, kill the runtime process itself; `delete -f` then stops the rest.
        for (let attempt = 0; !exited; attempt++) {
          try {
            await execFileP(this.binary, [...this.rootArgs, 'kill', id, 'KILL']);
            return;
          } catch {
            if (attempt === 100) child.kill('SIGKILL');
            await new Promise((r) => setTimeout(r, 20));
          }
        }
      })();
    };
    const onAbort = (): void => kill('signal');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const timer =
      opts.timeoutMs === undefined ? undefined : setTimeout(() => kill('timeout'), opts.timeoutMs);
    const limitTimer =
      timeLimitMs === undefined ? undefined : setTimeout(() => kill('limit'), timeLimitMs);

    return new Promise<RunResult>((resolve, reject) => {
      void child.closed.then(({ code, signal }) => {
        exited = true;
        opts.signal?.removeEventListener('abort', onAbort);
        if (timer !== undefined) clearTimeout(timer);
        if (limitTimer !== undefined) clearTimeout(limitTimer);
        const exitCode = code ?? 128 + (signal === null ? 0 : (SIGNALS[signal] ?? 0));
        void (async () => {
          await killing;
          if (aborted === 'limit') {
            await this.delete(id);
            throw new LimitExceededError(
              'time',
              timeLimitMs ?? 0,
              `process ${JSON.stringify(spec.args.join(' '))} was killed at its time limit (${timeLimitMs ?? 0} ms)`,
              { details: { containerId: id, exitCode, tail: tail.toString() } },
            );
          }
          if (aborted !== undefined) {
            await this.delete(id);
            const why =
              aborted === 'timeout' ? `timed out after ${opts.timeoutMs ?? 0} ms` : 'aborted';
            throw new RuntimeError(
              RuntimeErrorCode.Aborted,
              `process ${JSON.stringify(spec.args.join(' '))} ${why}`,
              {
                cause: opts.signal?.reason,
                details: { containerId: id },
              },
            );
          }
          const valid = spec.validExitCodes ?? [0];
          if (valid.includes(exitCode)) return { containerId: id, exitCode, tail: tail.toString() };
          const runtimeErr = exitCode === 0 ? '' : await this.runtimeFailure(logFile);
          if (runtimeErr !== '') {
            await this.delete(id);
            throw new RuntimeError(RuntimeErrorCode.StartFailed, `${this.name}: ${runtimeErr}`, {
              details: { containerId: id },
            });
          }
          throw new ExecError(
            `process ${JSON.stringify(spec.args.join(' '))} did not complete successfully: exit code: ${exitCode}`,
            exitCode,
            tail.toString(),
            { details: { containerId: id } },
          );
        })().then(resolve, reject);
      }, onStartFailure);
      // The runtime's exec failed after all (spawnProcess checked that it is there).
      function onStartFailure(err: unknown): void {
        exited = true;
        opts.signal?.removeEventListener('abort', onAbort);
        if (timer !== undefined) clearTimeout(timer);
        if (limitTimer !== undefined) clearTimeout(limitTimer);
        reject(startFailed(err));
      }
    });
  }

  /** The runtime's own error, from its log file; empty when it logged none (the process failed). */
  private async runtimeFailure(logFile: string): Promise<string> {
    let text: string;
    try {
      text = await readFile(logFile, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
      throw err;
    }
    const msgs: string[] = [];
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      if (this.name === 'runc') {
        try {
          const j = JSON.parse(line) as { level?: string; msg?: string };
          if (j.level === 'error' || j.level === 'fatal') msgs.push(j.msg ?? line);
        } catch {
          msgs.push(line);
        }
      } else {
        msgs.push(line);
      }
    }
    return msgs.join('; ');
  }
}
