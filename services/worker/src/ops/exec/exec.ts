import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pb, withCleanup } from '@kiln/protocol';
import type Long from 'long';
import { mountTemp, unmountUnder } from '../../snapshot/index.js';
import type { MountSpec, Snapshotter } from '../../snapshot/index.js';
import { resolveInRoot } from '@kiln/layers';
import type {
  ContainerMount,
  NetworkMode,
  OciRuntime,
  RunOptions,
  RunSpec,
  SecurityMode,
  TaskLimits,
} from '../../runtime/index.js';
import { capLimits } from '../../runtime/index.js';
import { CacheMounts } from './cache-mounts.js';
import type { CacheMountProvider, CacheSharing } from './cache-mounts.js';
import { ExecOpError, SecretNotFoundError, SshNotFoundError } from './errors.js';
import { SecretDir, SocketForwarder } from './session-mounts.js';

const execFileP = promisify(execFile);

/** Returns a secret's bytes by id, or undefined when the session has no such secret. */
export type SecretProvider = (id: string) => Promise<Uint8Array | undefined>;
/** Returns the host path of an SSH agent socket by id, or undefined when none is forwarded. */
export type SshProvider = (id: string) => Promise<string | undefined>;

/** What an ExecOp runs against; one per worker, shared by concurrent runs. */
export interface ExecEnv {
  snapshotter: Snapshotter;
  runtime: OciRuntime;
  /** The worker's state dir: `cache-mounts/` and `exec/` (mount points, secrets) live here. */
  stateDir: string;
  /**
   * Where cache mounts come from: the farm's (`FarmCacheMounts`) or this worker's directories;
   * default a `CacheMounts` on `<stateDir>/cache-mounts`. Share it between runs.
   */
  cacheMounts?: CacheMountProvider;
  secrets?: SecretProvider;
  ssh?: SshProvider;
}

export interface RunExecOptions extends Pick<
  RunOptions,
  'signal' | 'timeoutMs' | 'onOutput' | 'tailLines'
> {
  /** The decoded op. */
  op: pb.IExecOp;
  /** Committed snapshot name of each input, by input index; `undefined` for scratch. */
  inputs: ReadonlyArray<string | undefined>;
  /** The name to commit output `index` as. Default `exec-<random>-<index>`. */
  outputName?: (index: number) => string;
  /**
   * The build's cache namespace (its tenant's, from the task; '' when the farm shares caches):
   * a cache mount is the directory of (namespace, id), so tenants never share one.
   */
  cacheNamespace?: string;
  /**
   * The build's tenant's limits (from the task; a 0 field is none): each applies capped by the
   * runtime's own (the worker's limit is a maximum).
   */
  tenantLimits?: TaskLimits;
}

export interface ExecResult {
  /** Committed snapshot name of each output, by output index. */
  outputs: Map<number, string>;
  exitCode: number;
}

type Cleanup = () => Promise<void> | void;

const CACHE_SHARING: Record<number, CacheSharing> = {
  [pb.CacheSharingOpt.SHARED]: 'shared',
  [pb.CacheSharingOpt.PRIVATE]: 'private',
  [pb.CacheSharingOpt.LOCKED]: 'locked',
};

function num(v: number | Long | null | undefined, dflt: number): number {
  if (v === null || v === undefined) return dflt;
  return typeof v === 'number' ? v : v.toNumber();
}

const cacheMountsByDir = new Map<string, CacheMounts>();
/** The exec dirs {@link runExec} made in this process. */
const madeRoots = new Set<string>();

/** One CacheMounts per state dir in this process, so that locks hold across runs. */
function defaultCacheMounts(stateDir: string): CacheMounts {
  const dir = join(stateDir, 'cache-mounts');
  let c = cacheMountsByDir.get(dir);
  if (c === undefined) {
    c = new CacheMounts(dir);
    cacheMountsByDir.set(dir, c);
  }
  return c;
}

function proxyEnv(p: pb.IProxyEnv | null | undefined): string[] {
  if (!p) return [];
  const out: string[] = [];
  const add = (name: string, v: string | null | undefined): void => {
    if (v) out.push(`${name.toUpperCase()}=${v}`, `${name.toLowerCase()}=${v}`);
  };
  add('HTTP_PROXY', p.httpProxy);
  add('HTTPS_PROXY', p.httpsProxy);
  add('FTP_PROXY', p.ftpProxy);
  add('NO_PROXY', p.noProxy);
  add('ALL_PROXY', p.allProxy);
  return out;
}

/**
 * Runs an LLB ExecOp: builds the container's mounts from the op's mounts (BuildKit's
 * llbsolver/mounts semantics), runs the process, and commits every writable mount that has an
 * output index as a new snapshot on top of its input.
 *
 * - BIND: read-only as a view of the input; writable with an output as a prepared snapshot that
 *   becomes that output; writable without one as a scratch copy thrown away; `selector` mounts a
 *   path inside the input (resolved inside it, symlinks included).
 * - CACHE: a persistent directory per cache id and cache namespace (seeded from the input when
 *   first made), shared, private or locked as asked.
 * - TMPFS: a tmpfs of the given size.
 * - SECRET: the secret's bytes in a file on a private tmpfs outside every snapshot, with the
 *   op's uid/gid/mode, bound read-only; a missing required secret is {@link SecretNotFoundError}.
 * - SSH: a socket forwarding to the session's agent, with the op's uid/gid/mode.
 *
 * Empty files and directories the runtime creates in the rootfs as mount targets are removed
 * before committing. On any failure every prepared snapshot is removed and nothing is committed;
 * on success the caller owns the returned snapshots.
 */
export async function runExec(env: ExecEnv, opts: RunExecOptions): Promise<ExecResult> {
  const { op } = opts;
  const meta = op.meta;
  if (!meta?.args || meta.args.length === 0) throw new ExecOpError('exec op has no arguments');
  const runId = randomBytes(6).toString('hex');
  const tmpRoot = join(env.stateDir, 'exec');
  // Made once per process (until sweepExecState removes it).
  if (!madeRoots.has(tmpRoot)) {
    await mkdir(tmpRoot, { recursive: true });
    madeRoots.add(tmpRoot);
  }
  const cleanups: Cleanup[] = [];
  const outputs: Array<{ index: number; key: string }> = [];
  const cacheMounts = env.cacheMounts ?? defaultCacheMounts(env.stateDir);

  const input = (m: pb.IMount, i: number): string | undefined => {
    const idx = num(m.input, -1);
    if (idx < 0) return undefined;
    if (idx >= opts.inputs.length) {
      throw new ExecOpError(`mount ${i} (${m.dest ?? ''}) refers to missing input ${idx}`, {
        details: { mount: i },
      });
    }
    return opts.inputs[idx];
  };

  /**
   * Mounts snapshot `specs` on the host and returns the path. A writable plain directory is used
   * as is; a read-only one is really mounted read-only, so that nothing (the runtime creating a
   * mount point, above all) can write into a committed snapshot through it.
   */
  const hostPath = async (specs: MountSpec[]): Promise<{ path: string; readonly: boolean }> => {
    const m = await mountTemp(specs, join(tmpRoot, 'mnt'));
    cleanups.push(() => m.release());
    return { path: m.path, readonly: m.readonly };
  };

  let secretDir: SecretDir | undefined;
  let socketDir: string | undefined;
  let rootfs: { path: string; readonly: boolean } | undefined;
  const mounts: ContainerMount[] = [];
  let committed = false;
  try {
    const ordered = (op.mounts ?? []).map((m, i) => ({ m, i }));
    ordered.sort((a, b) =>
      (a.m.dest ?? '') < (b.m.dest ?? '')
        ? -1
        : (a.m.dest ?? '') > (b.m.dest ?? '')
          ? 1
          : a.i - b.i,
    );
    for (const { m, i } of ordered) {
      const dest = m.dest ?? '';
      const type = m.mountType ?? pb.MountType.BIND;
      switch (type) {
        case pb.MountType.BIND: {
          const parent = input(m, i);
          const output = num(m.output, -1);
          const key = `exec-${runId}-${i}`;
          let specs: MountSpec[];
          if (m.readonly && parent === undefined) {
            const empty = await mkdtemp(join(tmpRoot, 'empty-'));
            cleanups.push(() => rm(empty, { recursive: true, force: true }));
            specs = [{ type: 'bind', source: empty, options: ['ro', 'rbind'] }];
          } else {
            if (m.readonly) {
              // A committed snapshot mounts read-only as it is; the lease keeps it meanwhile.
              const lease = env.snapshotter.acquire(parent!);
              cleanups.push(() => lease.release());
              specs = await env.snapshotter.mounts(parent!);
            } else {
              specs = await env.snapshotter.prepare(key, parent);
              if (output >= 0) outputs.push({ index: output, key });
              else cleanups.push(() => env.snapshotter.remove(key));
              const lease = env.snapshotter.acquire(key);
              cleanups.push(() => lease.release());
            }
          }
          const host = await hostPath(specs);
          const readonly = m.readonly === true;
          const sel = m.selector ?? '';
          const source =
            sel === '' || sel === '/' ? host.path : await resolveInRoot(host.path, sel);
          if (dest === '/') {
            rootfs = { path: source, readonly };
          } else {
            mounts.push({ type: 'bind', source, destination: dest, readonly });
          }
          break;
        }
        case pb.MountType.CACHE: {
          const id = m.cacheOpt?.ID ?? '';
          if (id === '')
            throw new ExecOpError(`cache mount ${dest} has no id`, { details: { mount: i } });
          const sharing =
            CACHE_SHARING[m.cacheOpt?.sharing ?? pb.CacheSharingOpt.SHARED] ?? 'shared';
          const handle = await cacheMounts.mount({
            namespace: opts.cacheNamespace ?? '',
            id,
            sharing,
            readonly: m.readonly === true,
            ...(opts.signal ? { signal: opts.signal } : {}),
          });
          cleanups.push(() => handle.release());
          const from = input(m, i);
          if (handle.created && from !== undefined)
            await seedCache(env, from, m.selector ?? '', handle.path, tmpRoot);
          mounts.push({
            type: 'bind',
            source: handle.path,
            destination: dest,
            readonly: m.readonly === true,
          });
          break;
        }
        case pb.MountType.TMPFS: {
          mounts.push({ type: 'tmpfs', destination: dest, size: num(m.TmpfsOpt?.size, 0) });
          break;
        }
        case pb.MountType.SECRET: {
          const so = m.secretOpt ?? {};
          const id = so.ID ?? '';
          const data = env.secrets ? await env.secrets(id) : undefined;
          if (data === undefined) {
            if (so.optional) break;
            throw new SecretNotFoundError(id, { details: { mount: dest } });
          }
          if (secretDir === undefined) {
            secretDir = await SecretDir.create(tmpRoot);
            const d = secretDir;
            cleanups.push(() => d.close());
          }
          const file = await secretDir.write(data, so.uid ?? 0, so.gid ?? 0, so.mode ?? 0o400);
          mounts.push({ type: 'bind', source: file, destination: dest, readonly: true });
          break;
        }
        case pb.MountType.SSH: {
          const so = m.SSHOpt ?? {};
          const id = so.ID === undefined || so.ID === null || so.ID === '' ? 'default' : so.ID;
          const target = env.ssh ? await env.ssh(id) : undefined;
          if (target === undefined) {
            if (so.optional) break;
            throw new SshNotFoundError(id, { details: { mount: dest } });
          }
          if (socketDir === undefined) {
            // unix socket paths are short (108 bytes): keep them in the system temp dir
            socketDir = await mkdtemp(join(tmpdir(), 'kiln-ssh-'));
            const d = socketDir;
            cleanups.push(() => rm(d, { recursive: true, force: true }));
          }
          const fwd = await SocketForwarder.listen(
            join(socketDir, `${i}.sock`),
            target,
            so.uid ?? 0,
            so.gid ?? 0,
            so.mode ?? 0o600,
          );
          cleanups.push(() => fwd.close());
          mounts.push({ type: 'bind', source: fwd.path, destination: dest, readonly: false });
          break;
        }
        default:
          throw new ExecOpError(`unknown mount type ${String(type)}`, { details: { mount: i } });
      }
    }
    if (rootfs === undefined) throw new ExecOpError('exec op has no root mount');

    const secretEnv: string[] = [];
    for (const se of op.secretenv ?? []) {
      const id = se.ID ?? '';
      const data = env.secrets ? await env.secrets(id) : undefined;
      if (data === undefined) {
        if (se.optional) continue;
        throw new SecretNotFoundError(id, { details: { env: se.name ?? '' } });
      }
      secretEnv.push(`${se.name ?? ''}=${Buffer.from(data).toString('utf8')}`);
    }

    const spec: RunSpec = {
      rootfs: rootfs.path,
      readonlyRootfs: rootfs.readonly,
      mounts,
      args: meta.args,
      env: [...(meta.env ?? []), ...proxyEnv(meta.proxyEnv), ...secretEnv],
      cwd: meta.cwd ?? '/',
      user: meta.user ?? '',
      hostname: meta.hostname ?? '',
      extraHosts: (meta.extraHosts ?? []).map((h) => ({ host: h.Host ?? '', ip: h.IP ?? '' })),
      network: networkMode(op.network),
      security: securityMode(op.security),
      ulimits: (meta.ulimit ?? []).map((u) => ({
        name: u.Name ?? '',
        soft: num(u.Soft, 0),
        hard: num(u.Hard, 0),
      })),
      removeMountStubsRecursive: meta.removeMountStubsRecursive === true,
    };
    if (meta.cgroupParent) spec.cgroupParent = meta.cgroupParent;
    if (meta.validExitCodes && meta.validExitCodes.length > 0)
      spec.validExitCodes = meta.validExitCodes;

    const runOpts: RunOptions = {};
    if (opts.signal) runOpts.signal = opts.signal;
    if (opts.timeoutMs !== undefined) runOpts.timeoutMs = opts.timeoutMs;
    if (opts.onOutput) runOpts.onOutput = opts.onOutput;
    if (opts.tailLines !== undefined) runOpts.tailLines = opts.tailLines;
    if (opts.tenantLimits) runOpts.limits = capLimits(env.runtime.limits, opts.tenantLimits);
    const res = await env.runtime.run(spec, runOpts);

    // Unmount and release everything, then commit the outputs.
    await runCleanups(cleanups.splice(0).reverse(), false);
    const names = new Map<number, string>();
    const done: string[] = [];
    try {
      for (const o of outputs) {
        const name = opts.outputName?.(o.index) ?? `exec-${runId}-out-${o.index}`;
        await env.snapshotter.commit(name, o.key);
        done.push(name);
        names.set(o.index, name);
      }
    } catch (err) {
      for (const n of done) await env.snapshotter.remove(n).catch(() => undefined);
      throw err;
    }
    committed = true;
    return { outputs: names, exitCode: res.exitCode };
  } finally {
    await runCleanups(cleanups.reverse(), true);
    if (!committed) {
      for (const o of outputs) await env.snapshotter.remove(o.key).catch(() => undefined);
    }
  }
}

/**
 * Unmounts and removes what runs of a dead process left in `<stateDir>/exec` (snapshot mounts,
 * secret tmpfs). Call once at worker start, before any run; cache directories are kept.
 */
export async function sweepExecState(stateDir: string): Promise<void> {
  const dir = join(stateDir, 'exec');
  madeRoots.delete(dir);
  await unmountUnder(dir);
  await rm(dir, { recursive: true, force: true });
}

/** Runs cleanups in order; with `quiet`, after a failure, later ones still run and errors are dropped. */
async function runCleanups(fns: Cleanup[], quiet: boolean): Promise<void> {
  let first: unknown;
  for (const f of fns) {
    try {
      await f();
    } catch (err) {
      first ??= err;
    }
  }
  if (!quiet && first !== undefined)
    throw first instanceof Error ? first : new Error('cleanup failed', { cause: first });
}

/** Copies the input's tree (or its `selector` subdir) into a new cache directory. */
async function seedCache(
  env: ExecEnv,
  from: string,
  selector: string,
  dir: string,
  tmpRoot: string,
): Promise<void> {
  const lease = env.snapshotter.acquire(from);
  try {
    const m = await mountTemp(await env.snapshotter.mounts(from), join(tmpRoot, 'mnt'));
    await withCleanup(
      async () => {
        const src =
          selector === '' || selector === '/' ? m.path : await resolveInRoot(m.path, selector);
        await execFileP('cp', ['-a', `${src}/.`, `${dir}/`]);
      },
      () => m.release(),
    );
  } finally {
    lease.release();
  }
}

function networkMode(n: pb.NetMode | null | undefined): NetworkMode {
  if (n === pb.NetMode.HOST) return 'host';
  if (n === pb.NetMode.NONE) return 'none';
  return 'sandbox';
}

function securityMode(s: pb.SecurityMode | null | undefined): SecurityMode {
  return s === pb.SecurityMode.INSECURE ? 'insecure' : 'sandbox';
}
