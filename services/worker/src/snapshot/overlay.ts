import { execFile } from 'node:child_process';
import { statSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { BaseSnapshotter, settle } from './base.js';
import { SnapshotError, SnapshotErrorCode } from './errors.js';
import type { SnapshotRecord } from './metadata.js';
import { MOUNT_DATA_LIMIT, detectOverlay, mountTemp } from './mount.js';
import type { DiffSourceHandle, MountSpec } from './types.js';
import { cleanupAfter } from '@kiln/protocol';

const execFileP = promisify(execFile);

export interface OverlaySnapshotterOptions {
  /** The state dir (`snapshots/`, `metadata.jsonl`). */
  root: string;
  /**
   * Most lower dirs in one overlay mount before the chain is flattened (the kernel allows 500; the
   * option string must also fit one page). Default 128.
   */
  maxLowerDirs?: number;
}

/**
 * Kernel overlayfs snapshots, laid out as containerd's overlay snapshotter: `snapshots/<id>/fs` is
 * a snapshot's upper dir (its whole tree for a base), `work` its overlay work dir. A snapshot's
 * view is its chain of upper dirs as lowerdirs. A chain longer than `maxLowerDirs` is cut by
 * materialising an ancestor's whole view once into `snapshots/<id>/flat` (kept until the ancestor
 * is removed), so every mount stays within the kernel's limits.
 */
export class OverlaySnapshotter extends BaseSnapshotter {
  readonly backend = 'overlayfs' as const;
  private readonly maxLowerDirs: number;
  private extraOptions: string[] = [];
  /**
   * Writable mounts are `volatile` when the kernel has it: overlayfs then never syncs the upper
   * filesystem, where an unmount otherwise syncs the whole disk under it (1.8 ms median, tens
   * to hundreds of ms on a disk busy with other writers, at every RUN and COPY). Nothing here
   * relies on those syncs: results are rebuilt, not recovered, after a machine crash.
   */
  private volatile = false;
  private readonly flattening = new Map<number, Promise<string>>();

  private constructor(opts: OverlaySnapshotterOptions) {
    super(opts.root, 'overlayfs');
    this.maxLowerDirs = Math.max(2, opts.maxLowerDirs ?? 128);
  }

  /** Opens (or creates) the snapshotter at `opts.root`; fails when the kernel cannot mount overlayfs. */
  static async open(opts: OverlaySnapshotterOptions): Promise<OverlaySnapshotter> {
    const s = new OverlaySnapshotter(opts);
    await mkdir(opts.root, { recursive: true });
    const probe = await detectOverlay(join(opts.root, 'tmp'));
    if (!probe.ok) {
      throw new SnapshotError(
        SnapshotErrorCode.Io,
        `overlayfs is not available: ${probe.reason ?? ''}`,
      );
    }
    s.extraOptions = probe.options;
    s.volatile = probe.volatile ?? false;
    await s.load();
    return s;
  }

  protected async create(rec: SnapshotRecord, dir: string): Promise<void> {
    if (rec.kind === 'active') {
      await Promise.all([
        mkdir(join(dir, 'fs'), { mode: 0o755 }),
        mkdir(join(dir, 'work'), { mode: 0o700 }),
      ]);
    }
  }

  protected ownDataDir(rec: SnapshotRecord): string | undefined {
    return rec.kind === 'view' ? undefined : join(this.dirOf(rec), 'fs');
  }

  protected async mountsOf(key: string, rec: SnapshotRecord): Promise<MountSpec[]> {
    if (rec.kind === 'active') {
      const fs = join(this.dirOf(rec), 'fs');
      if (rec.parent === undefined) return [{ type: 'bind', source: fs, options: ['rw', 'rbind'] }];
      const lowers = await this.lowerDirs(rec.parent);
      return [this.overlay(lowers, { upper: fs, work: join(this.dirOf(rec), 'work') })];
    }
    const lowers = await this.lowerDirs(rec.kind === 'view' ? rec.parent! : key);
    if (lowers.length === 1)
      return [{ type: 'bind', source: lowers[0]!, options: ['ro', 'rbind'] }];
    return [this.overlay(lowers)];
  }

  private overlay(lowers: string[], rw?: { upper: string; work: string }): MountSpec {
    const abs = [`lowerdir=${lowers.join(':')}`];
    if (rw) abs.push(`upperdir=${rw.upper}`, `workdir=${rw.work}`);
    abs.push(...this.extraOptions, ...(rw && this.volatile ? ['volatile'] : []));
    if (abs.join(',').length <= MOUNT_DATA_LIMIT)
      return { type: 'overlay', source: 'overlay', options: abs };
    // Too long for one page: paths relative to the snapshots dir, as containerd does.
    const relOf = (p: string): string => p.slice(this.snapshotsDir.length + 1);
    const rel = [`lowerdir=${lowers.map(relOf).join(':')}`];
    if (rw) rel.push(`upperdir=${relOf(rw.upper)}`, `workdir=${relOf(rw.work)}`);
    rel.push(...this.extraOptions, ...(rw && this.volatile ? ['volatile'] : []));
    return { type: 'overlay', source: 'overlay', options: rel, cwd: this.snapshotsDir };
  }

  /** The lowerdirs showing committed `name`, top first; flattens an ancestor when too many. */
  private async lowerDirs(name: string): Promise<string[]> {
    const out: string[] = [];
    for (const { key, rec } of this.chain(name)) {
      const dir = this.dirOf(rec);
      if (existsSync(join(dir, 'flat'))) {
        out.push(join(dir, 'flat'));
        return out;
      }
      if (out.length === this.maxLowerDirs - 1 && rec.parent !== undefined) {
        out.push(await this.flatten(key, rec));
        return out;
      }
      out.push(join(dir, 'fs'));
    }
    return out;
  }

  /** Materialises committed `key`'s whole view into `<id>/flat` (once; concurrent callers share it). */
  private flatten(key: string, rec: SnapshotRecord): Promise<string> {
    let p = this.flattening.get(rec.id);
    if (p === undefined) {
      p = (async () => {
        const lease = this.acquire(key);
        const dir = this.dirOf(rec);
        const tmp = join(dir, 'flat.tmp');
        try {
          await rm(tmp, { recursive: true, force: true });
          await mkdir(tmp);
          const view = await mountTemp(await this.mountsOf(key, rec), join(this.root, 'tmp'));
          try {
            await execFileP('cp', ['-a', `${view.path}/.`, `${tmp}/`]);
          } finally {
            await view.release();
          }
          await rename(tmp, join(dir, 'flat'));
          return join(dir, 'flat');
        } catch (err) {
          throw new SnapshotError(SnapshotErrorCode.Io, `flattening ${key}`, {
            cause: err,
            details: { key },
          });
        } finally {
          lease.release();
          this.flattening.delete(rec.id);
        }
      })();
      this.flattening.set(rec.id, p);
    }
    return p;
  }

  upperDir(key: string): Promise<string | undefined> {
    return settle(() => {
      const rec = this.record(key);
      return rec.kind === 'view' ? undefined : join(this.dirOf(rec), 'fs');
    });
  }

  /**
   * The upper dir with the parent's overlay lowerdirs (`lowerLayers`, top first), nothing
   * mounted: the differ reads them as overlayfs does (`@kiln/layers` overlayLayerChanges). The
   * parent stays leased until `release`.
   */
  async diffSource(key: string): Promise<DiffSourceHandle> {
    const rec = this.record(key);
    if (rec.kind === 'view') {
      throw new SnapshotError(
        SnapshotErrorCode.InvalidState,
        `a view has no changes to diff (${key})`,
        {
          details: { key },
        },
      );
    }
    const leases = [this.acquire(key)];
    const release = (): Promise<void> => {
      for (const l of leases) l.release();
      return Promise.resolve();
    };
    const upperDir = join(this.dirOf(rec), 'fs');
    try {
      // A base snapshot's upper dir is its whole tree: nothing to compare with.
      if (rec.parent === undefined) return { source: { kind: 'overlay', upperDir }, release };
      leases.push(this.acquire(rec.parent));
      const lowerLayers = await this.lowerDirs(rec.parent);
      return {
        source: {
          kind: 'overlay',
          upperDir,
          lowerLayers,
          opaqueXattr: this.extraOptions.includes('userxattr')
            ? 'user.overlay.opaque'
            : 'trusted.overlay.opaque',
        },
        release,
      };
    } catch (err) {
      return cleanupAfter(err, release);
    }
  }
}

/**
 * Whether `p` exists: a synchronous stat (metadata the kernel has cached costs microseconds; one
 * per snapshot of a chain, at every mount, each a thread-pool round trip otherwise).
 */
function existsSync(p: string): boolean {
  try {
    statSync(p);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}
