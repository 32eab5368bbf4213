import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { BaseSnapshotter, settle } from './base.js';
import { SnapshotError, SnapshotErrorCode } from './errors.js';
import type { SnapshotRecord } from './metadata.js';
import type { DiffSourceHandle, MountSpec } from './types.js';

const execFileP = promisify(execFile);

export interface CopySnapshotterOptions {
  /** The state dir (`snapshots/`, `metadata.jsonl`). */
  root: string;
}

/**
 * The fallback where overlayfs is unavailable (containerd's `native` snapshotter): every active or
 * committed snapshot is a whole tree in `snapshots/<id>/fs`, made by copying the parent's tree
 * (`cp -a`: hardlinks, owners, modes, timestamps and xattrs preserved where the filesystem allows).
 * A view needs no copy: it is a read-only bind of its committed parent. Diffs compare the tree with
 * the parent's.
 */
export class CopySnapshotter extends BaseSnapshotter {
  readonly backend = 'native' as const;

  private constructor(opts: CopySnapshotterOptions) {
    super(opts.root, 'native');
  }

  static async open(opts: CopySnapshotterOptions): Promise<CopySnapshotter> {
    const s = new CopySnapshotter(opts);
    await mkdir(opts.root, { recursive: true });
    await s.load();
    return s;
  }

  protected async create(
    rec: SnapshotRecord,
    dir: string,
    parent: SnapshotRecord | undefined,
  ): Promise<void> {
    if (rec.kind !== 'active') return;
    const fs = join(dir, 'fs');
    await mkdir(fs, { mode: 0o755 });
    if (parent === undefined) return;
    try {
      await execFileP('cp', ['-a', `${join(this.dirOf(parent), 'fs')}/.`, `${fs}/`]);
    } catch (err) {
      throw new SnapshotError(
        SnapshotErrorCode.Io,
        `copying parent ${rec.parent ?? ''}: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
  }

  protected ownDataDir(rec: SnapshotRecord): string | undefined {
    return rec.kind === 'view' ? undefined : join(this.dirOf(rec), 'fs');
  }

  protected mountsOf(key: string, rec: SnapshotRecord): Promise<MountSpec[]> {
    if (rec.kind === 'active') {
      return Promise.resolve([
        { type: 'bind', source: join(this.dirOf(rec), 'fs'), options: ['rw', 'rbind'] },
      ]);
    }
    const target = rec.kind === 'view' ? this.record(rec.parent!) : rec;
    return Promise.resolve([
      { type: 'bind', source: join(this.dirOf(target), 'fs'), options: ['ro', 'rbind'] },
    ]);
  }

  upperDir(key: string): Promise<string | undefined> {
    return settle(() => {
      this.record(key);
      return undefined;
    });
  }

  diffSource(key: string): Promise<DiffSourceHandle> {
    return settle(() => this.diffSourceSync(key));
  }

  private diffSourceSync(key: string): DiffSourceHandle {
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
    const newDir = join(this.dirOf(rec), 'fs');
    let baseDir: string | undefined;
    if (rec.parent !== undefined) {
      leases.push(this.acquire(rec.parent));
      baseDir = join(this.dirOf(this.record(rec.parent)), 'fs');
    }
    const source =
      baseDir === undefined
        ? { kind: 'compare' as const, newDir }
        : { kind: 'compare' as const, baseDir, newDir };
    return {
      source,
      release: () => {
        for (const l of leases) l.release();
        return Promise.resolve();
      },
    };
  }
}
