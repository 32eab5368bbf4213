import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { SnapshotError, SnapshotErrorCode } from './errors.js';
import type { MountSpec } from './types.js';

const execFileP = promisify(execFile);

/** The kernel copies mount data into one page; leave room for the other options. */
export const MOUNT_DATA_LIMIT = 4096 - 512;

async function run(cmd: string, args: string[], cwd?: string): Promise<void> {
  try {
    await execFileP(cmd, args, { cwd, encoding: 'utf8' });
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim() ?? '';
    throw new SnapshotError(
      SnapshotErrorCode.Io,
      `${cmd} ${args.join(' ')}: ${stderr || (err as Error).message}`,
      {
        cause: err,
      },
    );
  }
}

/**
 * Mounts `specs` (in order, each on top of the previous) at `target` with the `mount` command.
 * A read-only bind is a bind followed by a read-only remount, as the kernel requires.
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
    const ro = m.options.includes('ro');
    const flag = m.options.includes('rbind') ? '--rbind' : '--bind';
    await run('mount', [flag, m.source, target]);
    if (ro) await run('mount', ['-o', 'remount,bind,ro', target]);
    return;
  }
  await run('mount', ['-t', 'overlay', 'overlay', '-o', m.options.join(','), target], m.cwd);
}

/** Unmounts `target` (lazily when busy, so a leaked process cannot pin a snapshot). */
export async function unmount(target: string): Promise<void> {
  try {
    await run('umount', [target]);
  } catch (err) {
    if (/not mounted|no mount point/i.test((err as Error).message)) return;
    await run('umount', ['-l', target]);
  }
}

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
  await mkdir(tmpRoot, { recursive: true });
  const dir = await mkdtemp(join(tmpRoot, 'm-'));
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

/** Unmounts (lazily) every mount at or below `dir`, deepest first. */
export async function unmountUnder(dir: string): Promise<void> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const points = info
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    .map((p) => p.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const p of points) await run('umount', ['-l', p]);
}

/** Whether the kernel mounts overlayfs here (with the options our differ needs). */
export async function detectOverlay(
  stateDir: string,
): Promise<{ ok: boolean; options: string[]; reason?: string }> {
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
    for (const extra of [['redirect_dir=off', 'metacopy=off', 'index=off'], []]) {
      try {
        await run('mount', [
          '-t',
          'overlay',
          'overlay',
          '-o',
          [...base, ...extra].join(','),
          join(dir, 'm'),
        ]);
        await unmount(join(dir, 'm'));
        return { ok: true, options: extra };
      } catch (err) {
        if (extra.length === 0) return { ok: false, options: [], reason: (err as Error).message };
      }
    }
    return { ok: false, options: [], reason: 'unreachable' };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
