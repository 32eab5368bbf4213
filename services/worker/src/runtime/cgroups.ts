import { constants, mkdirSync } from 'node:fs';
import { access, mkdir, readFile, readdir, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { RuntimeError, RuntimeErrorCode } from './errors.js';

/** Resource limits of one task's container; an absent or 0 field is no limit. */
export interface TaskLimits {
  /** Bytes of memory (and no swap beyond it); a process past it is OOM-killed. */
  memoryBytes?: number;
  /** Processes and threads at once; a fork past it fails with EAGAIN. */
  pids?: number;
  /** CPU shares relative to other tasks (cgroup v1 `cpu.shares`; v2 `cpu.weight` is derived). 1024 is the default weight. */
  cpuShares?: number;
  /** Wall time in milliseconds; the container is killed when it runs longer. */
  timeMs?: number;
}

/**
 * A tenant's limits capped by the worker's: each field is the smaller of the two where both
 * set one, else whichever is set (0 or absent is none). The worker's limit is a maximum no
 * tenant exceeds; a tenant may be given less.
 */
export function capLimits(worker: TaskLimits, tenant: TaskLimits): TaskLimits {
  const out: TaskLimits = {};
  for (const k of ['memoryBytes', 'pids', 'cpuShares', 'timeMs'] as const) {
    const w = worker[k] ?? 0;
    const t = tenant[k] ?? 0;
    const v = w > 0 && t > 0 ? Math.min(w, t) : w || t;
    if (v > 0) out[k] = v;
  }
  return out;
}

/** What the kernel counted for a task's cgroup when it ended. */
export interface CgroupEvents {
  /** Processes OOM-killed at the memory limit (v2; v1 counts them in the container's group). */
  oomKills: number;
  /** Charges refused at the memory limit (v1 `memory.failcnt`; v2 `memory.events` `max`). */
  memoryLimitHits: number;
  /** Times the pids limit was reached (refused forks, or a peak at the limit). */
  pidsLimitHits: number;
}

const ROOT = '/sys/fs/cgroup';
/** The cgroup v1 hierarchies whose limits Kiln sets. */
const V1_CONTROLLERS = ['memory', 'pids', 'cpu'] as const;

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

/** `key value` lines (memory.events, pids.events, memory.oom_control) as numbers. */
function counters(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k !== undefined && v !== undefined) out.set(k, Number(v));
  }
  return out;
}

async function readCounters(file: string): Promise<Map<string, number>> {
  return counters(await readFile(file, 'utf8').catch(() => ''));
}

/** 1 when the group's `pids.peak` reached its `pids.max` (a kernel without pids.peak: 0). */
async function peakAtLimit(dir: string): Promise<number> {
  const max = Number((await readFile(join(dir, 'pids.max'), 'utf8').catch(() => 'max')).trim());
  const peak = Number((await readFile(join(dir, 'pids.peak'), 'utf8').catch(() => '0')).trim());
  return Number.isFinite(max) && max > 0 && peak >= max ? 1 : 0;
}

/**
 * Makes the v1 cpuset group `path` and its missing ancestors, each with its parent's CPUs and
 * memory nodes (a new cpuset group has none, and takes no process until it has).
 */
export async function initCpuset(path: string): Promise<void> {
  const parts = path.split('/').filter(Boolean);
  for (let i = 1; i <= parts.length; i++) {
    const dir = join(ROOT, 'cpuset', ...parts.slice(0, i));
    await mkdir(dir, { recursive: true });
    for (const f of ['cpuset.cpus', 'cpuset.mems']) {
      if ((await readFile(join(dir, f), 'utf8')).trim() !== '') continue;
      await writeFile(join(dir, f), await readFile(join(dir, '..', f), 'utf8'));
    }
  }
}

/** runc's conversion of cgroup v1 `cpu.shares` (2..262144) to v2 `cpu.weight` (1..10000). */
export function sharesToWeight(shares: number): number {
  const s = Math.min(262144, Math.max(2, shares));
  return Math.floor(1 + ((s - 2) * 9999) / 262142);
}

/**
 * Per-task cgroups with the limits written by Kiln (cgroup v2, or the v1 `memory`, `pids` and
 * `cpu` hierarchies of a hybrid host): the task's group `<parent>/<id>` holds the limits and the
 * runtime puts the container in `<parent>/<id>/ctr`, so the group and its counters (OOM kills,
 * refused forks) outlive the container, which the runtime removes on exit. {@link release} reads
 * the counters and removes the group.
 */
export class TaskCgroups {
  private constructor(
    readonly version: 1 | 2,
    /**
     * v1: fill the task's own cpuset groups (a runtime run as root of a user namespace leaves
     * them without CPUs); a runtime run as the host's root fills the groups it makes itself.
     */
    private readonly fillCpuset: boolean,
  ) {}

  /**
   * Detects the cgroup version of this machine. `inUserNamespace`: the runtime runs as root of a
   * user namespace (see `fillCpuset`).
   */
  static async detect(inUserNamespace = false): Promise<TaskCgroups> {
    if (await exists(join(ROOT, 'cgroup.controllers'))) return new TaskCgroups(2, false);
    if (await exists(join(ROOT, 'memory', 'memory.limit_in_bytes')))
      return new TaskCgroups(1, inUserNamespace);
    throw new RuntimeError(
      RuntimeErrorCode.Unavailable,
      `no cgroup v2 or v1 memory controller under ${ROOT}: task limits cannot be applied`,
    );
  }

  /**
   * Fails with `RUNTIME_UNAVAILABLE` unless this process may make groups under `root` in every
   * hierarchy Kiln uses (a rootless worker may not, unless a subtree was delegated to its user).
   */
  async checkWritable(root: string): Promise<void> {
    const dirs =
      this.version === 2 ? [join(ROOT, root)] : V1_CONTROLLERS.map((c) => join(ROOT, c, root));
    for (const dir of dirs) {
      try {
        await mkdir(dir, { recursive: true });
        await access(dir, constants.W_OK);
      } catch (err) {
        throw new RuntimeError(
          RuntimeErrorCode.Unavailable,
          `cannot make task cgroups in ${dir} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): this worker runs in a user namespace and no cgroup was delegated to it, so memory, pids and CPU limits cannot be applied; run it with --pids-limit 0 and no --memory-limit or --cpu-shares (--time-limit works), or delegate a cgroup to its user`,
          { cause: err, details: { path: dir } },
        );
      }
    }
  }

  /**
   * Creates group `path` (absolute within the hierarchy, e.g. `/kiln/<id>`) with `limits`; returns
   * the container's cgroup path (for the OCI spec's `linux.cgroupsPath`).
   */
  async create(path: string, limits: TaskLimits): Promise<string> {
    try {
      if (this.version === 2) await this.#createV2(path, limits);
      else await this.#createV1(path, limits);
    } catch (err) {
      await this.release(path).catch(() => undefined);
      throw new RuntimeError(
        RuntimeErrorCode.Io,
        `creating cgroup ${path}: ${(err as Error).message}`,
        { cause: err },
      );
    }
    return join(path, 'ctr');
  }

  async #createV1(path: string, l: TaskLimits): Promise<void> {
    // Synchronous: a group is made in kernel memory in tens of µs, where three thread-pool round
    // trips cost the RUN's start milliseconds on a busy machine.
    for (const c of V1_CONTROLLERS) mkdirSync(join(ROOT, c, path), { recursive: true });
    const cpuset = this.fillCpuset && (await exists(join(ROOT, 'cpuset', path, '..')));
    const mem = join(ROOT, 'memory', path);
    if (l.memoryBytes) {
      await writeFile(join(mem, 'memory.limit_in_bytes'), String(l.memoryBytes));
      // Without swap accounting the file is missing, and there is no swap to limit.
      if (await exists(join(mem, 'memory.memsw.limit_in_bytes')))
        await writeFile(join(mem, 'memory.memsw.limit_in_bytes'), String(l.memoryBytes));
    }
    if (l.pids) await writeFile(join(ROOT, 'pids', path, 'pids.max'), String(l.pids));
    if (l.cpuShares) await writeFile(join(ROOT, 'cpu', path, 'cpu.shares'), String(l.cpuShares));
    // A new v1 cpuset group has no CPUs: the runtime fills in the groups it makes, except as root
    // of a user namespace (a remapped worker), so the task's own two levels are filled there.
    if (cpuset) await initCpuset(join(path, 'ctr'));
  }

  async #createV2(path: string, l: TaskLimits): Promise<void> {
    // Every ancestor hands the controllers down (the root and Kiln's own groups hold no process).
    const parts = path.split('/').filter(Boolean);
    for (let i = 0; i < parts.length; i++) {
      const dir = join(ROOT, ...parts.slice(0, i));
      await mkdir(dir, { recursive: true });
      const available = (await readFile(join(dir, 'cgroup.controllers'), 'utf8')).split(/\s+/);
      const wanted = ['memory', 'pids', 'cpu'].filter((c) => available.includes(c));
      if (wanted.length > 0)
        await writeFile(join(dir, 'cgroup.subtree_control'), wanted.map((c) => `+${c}`).join(' '));
    }
    const dir = join(ROOT, path);
    await mkdir(dir, { recursive: true });
    if (l.memoryBytes) {
      await writeFile(join(dir, 'memory.max'), String(l.memoryBytes));
      if (await exists(join(dir, 'memory.swap.max')))
        await writeFile(join(dir, 'memory.swap.max'), '0');
    }
    if (l.pids) await writeFile(join(dir, 'pids.max'), String(l.pids));
    if (l.cpuShares) await writeFile(join(dir, 'cpu.weight'), String(sharesToWeight(l.cpuShares)));
  }

  /** What the kernel counted in group `path` (read before {@link release}). */
  async events(path: string): Promise<CgroupEvents> {
    if (this.version === 2) {
      const mem = await readCounters(join(ROOT, path, 'memory.events'));
      const pids = await readCounters(join(ROOT, path, 'pids.events'));
      return {
        oomKills: mem.get('oom_kill') ?? 0,
        memoryLimitHits: mem.get('max') ?? 0,
        pidsLimitHits: (pids.get('max') ?? 0) + (await peakAtLimit(join(ROOT, path))),
      };
    }
    // v1 counts OOM kills in the victim's own group (the container's, gone by now); the task's
    // group counts the charges refused at its limit, and the kernel kills when reclaim fails.
    const oom = await readCounters(join(ROOT, 'memory', path, 'memory.oom_control'));
    // The charges refused at the limit (memory.failcnt); with the memory+swap limit set as well,
    // that counter refuses first and counts nothing, so a peak usage at the limit counts too.
    const mem = join(ROOT, 'memory', path);
    const read = async (f: string): Promise<number> =>
      Number((await readFile(join(mem, f), 'utf8').catch(() => '0')).trim()) || 0;
    let hits = (await read('memory.failcnt')) + (await read('memory.memsw.failcnt'));
    for (const prefix of ['memory.', 'memory.memsw.']) {
      const limit = await read(`${prefix}limit_in_bytes`);
      if (limit > 0 && (await read(`${prefix}max_usage_in_bytes`)) >= limit) hits++;
    }
    const pids = await readCounters(join(ROOT, 'pids', path, 'pids.events'));
    return {
      oomKills: oom.get('oom_kill') ?? 0,
      memoryLimitHits: hits,
      // v1 counts the refused forks in the forking (container's) group; the peak is the task's.
      pidsLimitHits: (pids.get('max') ?? 0) + (await peakAtLimit(join(ROOT, 'pids', path))),
    };
  }

  /**
   * Removes the empty task groups under `root` older than `minAgeMs` (left by a process that died,
   * or whose removal failed): a group still in use is not empty and stays, and a young one may be
   * another worker's, about to receive its container.
   */
  async sweep(root: string, minAgeMs = 60_000): Promise<void> {
    const dir = this.version === 2 ? join(ROOT, root) : join(ROOT, 'memory', root);
    const names = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const d of names) {
      if (!d.isDirectory() || !d.name.startsWith('kiln-')) continue;
      const st = await stat(join(dir, d.name)).catch(() => undefined);
      // ctimeMs has a fraction, Date.now() none: a group made this very millisecond looks made
      // in the future, so an age of 0 means any group, not one at least 0 ms old.
      if (st === undefined || (minAgeMs > 0 && Date.now() - st.ctimeMs < minAgeMs)) continue;
      await this.release(join(root, d.name), 0).catch(() => undefined);
    }
  }

  /**
   * Removes group `path` and what the runtime left under it, in every hierarchy (v1: the runtime
   * makes the container's group in all of them). A group still holding a process is retried
   * briefly (the container's processes are exiting), then left for {@link sweep}.
   */
  async release(path: string, retries = 50): Promise<void> {
    const roots =
      this.version === 2
        ? [ROOT]
        : (await readdir(ROOT, { withFileTypes: true }))
            .filter((d) => d.isDirectory())
            .map((d) => join(ROOT, d.name));
    for (const r of roots) {
      for (const dir of [join(r, path, 'ctr'), join(r, path)]) {
        for (let attempt = 0; ; attempt++) {
          try {
            await rmdir(dir);
            break;
          } catch (err) {
            const code = (err as NodeJS.ErrnoException).code;
            if (code === 'ENOENT') break;
            if (code !== 'EBUSY' || attempt >= retries) throw err;
            await new Promise((res) => setTimeout(res, 20));
          }
        }
      }
    }
  }
}
