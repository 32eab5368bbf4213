/**
 * Helpers the op executors share for working with committed snapshots as directories.
 * Ownership: every helper releases what it mounts or prepares, also when `fn` throws.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { applyLayer, diffLayer } from '@kiln/layers';
import type { TarLimits } from '@kiln/layers';
import { withCleanup } from '@kiln/protocol';
import { mountTemp } from '../snapshot/mount.js';
import type { Snapshotter } from '../snapshot/types.js';
import type { BlobStore, Digest } from '@kiln/store';

export interface SnapshotEnv {
  readonly snapshotter: Snapshotter;
  /** Scratch space for mount points and temp dirs. */
  readonly tmpDir: string;
  /** Bounds on what one archive (ADD) or layer unpacks to; none when absent. */
  readonly unpack?: TarLimits;
}

export function newSnapshotName(prefix = 'r'): string {
  return `${prefix}-${randomUUID()}`;
}

/**
 * Prepares a writable snapshot on `parent` (or empty), shows it to `fn` as a directory, then
 * commits it and returns the committed name. On failure nothing is left behind.
 */
export async function buildSnapshot(
  env: SnapshotEnv,
  parent: string | undefined,
  fn: (dir: string) => Promise<void>,
  name: string = newSnapshotName(),
): Promise<string> {
  const key = newSnapshotName('a');
  const mounts = await env.snapshotter.prepare(key, parent);
  let committed = false;
  try {
    const m = await mountTemp(mounts, join(env.tmpDir, 'mnt'));
    await withCleanup(
      () => fn(m.path),
      () => m.release(),
    );
    await env.snapshotter.commit(name, key);
    committed = true;
    return name;
  } finally {
    if (!committed) await env.snapshotter.remove(key).catch(() => undefined);
  }
}

/** Shows a committed snapshot (or the empty tree) read-only to `fn`. */
export async function readSnapshot<T>(
  env: SnapshotEnv,
  snapshot: string | undefined,
  fn: (dir: string) => Promise<T>,
): Promise<T> {
  if (snapshot === undefined) {
    await mkdir(env.tmpDir, { recursive: true });
    const empty = await mkdtemp(join(env.tmpDir, 'empty-'));
    return withCleanup(
      () => fn(empty),
      () => rm(empty, { recursive: true, force: true }),
    );
  }
  // A committed snapshot mounts read-only as it is: a lease keeps it while in use, and no view
  // record is made (nothing to write to the metadata).
  const lease = env.snapshotter.acquire(snapshot);
  try {
    const m = await mountTemp(await env.snapshotter.mounts(snapshot), join(env.tmpDir, 'mnt'));
    return await withCleanup(
      () => fn(m.path),
      () => m.release(),
    );
  } finally {
    lease.release();
  }
}

/** The committed snapshots that make up `name`, base first, `name` last. */
export async function snapshotChain(env: SnapshotEnv, name: string): Promise<string[]> {
  return [...(await env.snapshotter.parentChain(name))].reverse().concat(name);
}

/** Layers recorded for snapshots (a pulled image's blobs, a diff's layer with its whiteouts). */
export interface RecordedLayers {
  layers: { get(snapshot: string): { digest: string } | undefined };
  store: BlobStore;
}

/**
 * Applies the changes of each snapshot in `chain` (each relative to its parent, whiteouts
 * included) onto `dir`, in order: the layer semantics of BuildKit's merge. A snapshot with a
 * recorded layer is applied from that layer: for a diff result, the layer holds deletions that
 * its filesystem cannot.
 */
export async function applyChain(
  env: SnapshotEnv,
  chain: readonly string[],
  dir: string,
  recorded?: RecordedLayers,
): Promise<void> {
  for (const s of chain) {
    const rec = recorded?.layers.get(s);
    if (rec && recorded) {
      await applyLayer(await recorded.store.get(rec.digest as Digest), dir, unpackOpts(env));
      continue;
    }
    const handle = await env.snapshotter.diffSource(s);
    await withCleanup(
      async () => {
        const layer = diffLayer(handle.source, { compression: 'none' });
        await applyLayer(layer.stream, dir, unpackOpts(env));
        await layer.done;
      },
      () => handle.release(),
    );
  }
}

/** applyLayer's options for a worker's unpack limits. */
export function unpackOpts(env: Pick<SnapshotEnv, 'unpack'>): { limits?: TarLimits } {
  return env.unpack ? { limits: env.unpack } : {};
}
