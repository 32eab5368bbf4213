import { CopySnapshotter } from './copy.js';
import { detectOverlay } from './mount.js';
import { OverlaySnapshotter } from './overlay.js';
import type { Snapshotter } from './types.js';
import { join } from 'node:path';

export { CopySnapshotter } from './copy.js';
export type { CopySnapshotterOptions } from './copy.js';
export { OverlaySnapshotter } from './overlay.js';
export type { OverlaySnapshotterOptions } from './overlay.js';
export { SnapshotError, SnapshotErrorCode } from './errors.js';
export { detectOverlay, mountAll, mountTemp, unmount, unmountUnder } from './mount.js';
export type {
  DiffSourceHandle,
  MountSpec,
  SnapshotInfo,
  SnapshotKind,
  SnapshotLease,
  SnapshotOptions,
  SnapshotUsage,
  Snapshotter,
} from './types.js';

export interface OpenSnapshotterOptions {
  /** The worker's snapshot state dir; each backend keeps its own subdirectory. */
  root: string;
  /** `auto` (default): overlayfs when the kernel mounts it, else the copying one. */
  backend?: 'auto' | 'overlayfs' | 'native';
  maxLowerDirs?: number;
}

/** Opens the snapshotter a worker should use, detecting overlay support when `backend` is `auto`. */
export async function openSnapshotter(opts: OpenSnapshotterOptions): Promise<Snapshotter> {
  let backend = opts.backend ?? 'auto';
  if (backend === 'auto')
    backend = (await detectOverlay(join(opts.root, 'tmp'))).ok ? 'overlayfs' : 'native';
  if (backend === 'overlayfs') {
    const o: { root: string; maxLowerDirs?: number } = { root: join(opts.root, 'overlayfs') };
    if (opts.maxLowerDirs !== undefined) o.maxLowerDirs = opts.maxLowerDirs;
    return OverlaySnapshotter.open(o);
  }
  return CopySnapshotter.open({ root: join(opts.root, 'native') });
}
