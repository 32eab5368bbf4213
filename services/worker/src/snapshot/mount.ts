import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { MNT, MS, mount, umount2 } from '@kiln/sys';
import { SnapshotError, SnapshotErrorCode } from './errors.js';
import type { MountSpec } from './types.js';

const execFileP = promisify(execFile);

/** The kernel copies mount data into one page; leave room for the other options. */
export const MOUNT_DATA_LIMIT = 4096 - 512;

function ioError(what: string, err: unknown): SnapshotError {
  return new SnapshotError(SnapshotErrorCode.Io, `${what}: ${(err as Error).message}`, {
    cause: err,
  });
}

/** mount(8)'s flag words; every other option is the filesystem's data. */
const FLAG_WORDS: Readonly<Record<string, number>> = {
  ro: MS.RDONLY,
  rw: 0,
  nosuid: MS.NOSUID,
  nodev: MS.NODEV,
  noexec: MS.NOEXEC,
};

/** `options` as mount(2) takes them: flags and the data string. */
export function mountArgs(options: readonly string[]): { flags: number; data: string } {
  let flags = 0;
  const data: string[] = [];
  for (const o of options) {
    const f = FLAG_WORDS[o];
    if (f === undefined) data.push(o);
    else flags |= f;
  }
  return { flags, data: data.join(',') };
}

/**
 * Mounts `specs` (in order, each on top of the previous) at `target` with mount(2) (no process is
 * spawned). A read-only bind is a bind followed by a read-only remount, as the kernel requires.
 */
export async function mountAll(specs: readonly MountSpec[], target: string): Promise<void> {
  const done: number[] = [];
  try {
    for (const [i, m] of specs.entries()) {
      await mountOne(m, target);
      done.push(i);
    }
  } catch (err) {
    for (const _ of done) await unmount(target).catch(() => undefined);
    throw err;
  }
}

async function mountOne(m: MountSpec, target: string): Promise<void> {
  if (m.type === 'bind') {
    const flags = MS.BIND | (m.options.includes('rbind') ? MS.REC : 0);
    try {
      await mount(m.source, target, null, flags);
    } catch (err) {
      throw ioError(`bind mount ${m.source} on ${target}`, err);
    }
    if (m.options.includes('ro')) {
      try {
        await mount(null, target, null, MS.REMOUNT | MS.BIND | MS.RDONLY);
      } catch (err) {
        await umount2(target, MNT.DETACH).catch(() => undefined);
        throw ioError(`read-only remount of ${target}`, err);
      }
    }
    return;
  }
  if (m.cwd !== undefined) {
    await clearVolatileMark(m.options, m.cwd);
    // Relative lowerdirs (a chain too long for one page of absolute paths) are resolved from the
    // mounting process's working directory: a `mount` process of its own, which can chdir.
    try {
      await execFileP('mount', ['-t', 'overlay', 'overlay', '-o', m.options.join(','), target], {
        cwd: m.cwd,
        encoding: 'utf8',
      });
    } catch (err) {
      const stderr = (err as { stderr?: string }).stderr?.trim();
      throw ioError(`mount overlay on ${target}`, stderr ? new Error(stderr) : err);
    }
    return;
  }
  const { flags, data } = mountArgs(m.options);
  await clearVolatileMark(m.options);
  try {
    await mount('overlay', target, 'overlay', flags, data);
  } catch (err) {
    throw ioError(`mount overlay on ${target} (${data})`, err);
  }
}

/**
 * A `volatile` overlay leaves `<workdir>/work/incompat/volatile` behind, and the kernel refuses to
 * mount that workdir again while it is there (after a machine crash the upper dir may have lost
 * writes). Snapshots never outlive a machine crash in use (a restarted worker drops what was
 * active), so the mark is only in the way: removed before each mount.
 */
async function clearVolatileMark(options: readonly string[], cwd?: string): Promise<void> {
  if (!options.includes('volatile')) return;
  const work = options.find((o) => o.startsWith('workdir='))?.slice('workdir='.length);
  if (work === undefined) return;
  const mark = join(cwd ?? '', work, 'work', 'incompat');
  // A new snapshot's work dir has none (most mounts): a cached lookup, not a thread-pool trip.
  if (!existsSync(mark)) return;
  await rm(mark, { recursive: true, force: true });
}

/** Unmounts `target` (lazily when busy, so a leaked process cannot pin a snapshot). */
export async function unmount(target: string): Promise<void> {
  try {
    await umount2(target);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EINVAL' || code === 'ENOENT') return; // not mounted (or gone)
    try {
      await umount2(target, MNT.DETACH);
    } catch (err2) {
      throw ioError(`unmount ${target}`, err2);
    }
  }
}

/** Temp roots {@link mountTemp} made in this process (each made once, not at every mount). */
const madeRoots = new Set<string>();

/**
 * A host directory showing `specs`: a single writable bind needs no mount (its source is the tree);
 * anything else (a read-only bind included, so that it really is read-only) is mounted on a fresh
 * directory under `tmpRoot`. `release` unmounts and removes it.
 */
export async function mountTemp(
  specs: readonly MountSpec[],
  tmpRoot: string,
): Promise<{ path: string; readonly: boolean; release: () => Promise<void> }> {
  const only = specs.length === 1 ? specs[0] : undefined;
  if (only?.type === 'bind' && !only.options.includes('ro')) {
    return { path: only.source, readonly: false, release: () => Promise.resolve() };
  }
  if (!madeRoots.has(tmpRoot)) {
    await mkdir(tmpRoot, { recursive: true });
    madeRoots.add(tmpRoot);
  }
  let dir: string;
  try {
    dir = await mkdtemp(join(tmpRoot, 'm-'));
  } catch (err) {
    // Removed since (a sweep of the state dir): made again.
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    await mkdir(tmpRoot, { recursive: true });
    dir = await mkdtemp(join(tmpRoot, 'm-'));
  }
  try {
    await mountAll(specs, dir);
  } catch (err) {
    await rmdir(dir).catch(() => undefined);
    throw err;
  }
  let released = false;
  return {
    path: dir,
    readonly: specs.every(
      (m) => m.options.includes('ro') || !m.options.some((o) => o.startsWith('upperdir=')),
    ),
    release: async () => {
      if (released) return;
      released = true;
      for (const _ of specs) await unmount(dir);
      await rmdir(dir);
    },
  };
}

/** Unmounts (lazily) every mount at or below `dir`, deepest first; answers how many there were. */
export async function unmountUnder(dir: string): Promise<number> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const points = info
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    .map((p) => p.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const p of points) {
    await umount2(p, MNT.DETACH).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EINVAL' && err.code !== 'ENOENT') throw ioError(`unmount ${p}`, err);
    });
  }
  return points.length;
}

/** Whether the kernel mounts overlayfs here (with the options our differ needs). */
export async function detectOverlay(
  stateDir: string,
): Promise<{ ok: boolean; options: string[]; volatile?: boolean; reason?: string }> {
  await mkdir(stateDir, { recursive: true });
  const dir = await mkdtemp(join(stateDir, 'overlay-probe-'));
  const sub = ['l1', 'l2', 'u', 'w', 'm'];
  try {
    for (const s of sub) await mkdir(join(dir, s));
    const base = [
      `lowerdir=${join(dir, 'l2')}:${join(dir, 'l1')}`,
      `upperdir=${join(dir, 'u')}`,
      `workdir=${join(dir, 'w')}`,
    ];
    // The differ reads the upper dir as-is: no redirects, no metacopy (as BuildKit's overlay differ).
    // In a user namespace the kernel mounts overlayfs without `userxattr` but cannot write its
    // `trusted.overlay.*` markers there: removing a lower directory then fails with EIO. With it,
    // the markers are `user.overlay.*` (never carried into layers: see isSkippedXattr).
    const ns = (await inUserNamespace()) ? ['userxattr'] : [];
    for (const extra of [['redirect_dir=off', 'metacopy=off', 'index=off', ...ns], ns]) {
      try {
        await mount('overlay', join(dir, 'm'), 'overlay', 0, [...base, ...extra].join(','));
        await unmount(join(dir, 'm'));
        return { ok: true, options: extra, volatile: await mountsVolatile([...base, ...extra]) };
      } catch (err) {
        if (extra === ns) return { ok: false, options: [], reason: (err as Error).message };
      }
    }
    return { ok: false, options: [], reason: 'unreachable' };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }

  /** Whether `volatile` (Linux >= 5.10) is accepted with these options (a second mount too). */
  async function mountsVolatile(options: string[]): Promise<boolean> {
    const o = [...options, 'volatile'];
    try {
      for (let i = 0; i < 2; i++) {
        await clearVolatileMark(o);
        await mount('overlay', join(dir, 'm'), 'overlay', 0, o.join(','));
        await unmount(join(dir, 'm'));
      }
      return true;
    } catch {
      return false;
    }
  }
}

/** Whether this process runs in a user namespace other than the initial one (all ids mapped). */
async function inUserNamespace(): Promise<boolean> {
  const map = (await readFile('/proc/self/uid_map', 'utf8')).trim().split(/\s+/);
  return map.join(' ') !== '0 0 4294967295';
}
