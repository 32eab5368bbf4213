import { open, readFile, rename } from 'node:fs/promises';
import type { SnapshotKind } from './types.js';
import { SnapshotError, SnapshotErrorCode } from './errors.js';

/** One snapshot as persisted. `id` names its directory under `snapshots/`. */
export interface SnapshotRecord {
  id: number;
  kind: SnapshotKind;
  parent?: string;
  created: string;
  labels: Record<string, string>;
}

export interface MetadataFile {
  version: 1;
  backend: string;
  nextId: number;
  snapshots: Record<string, SnapshotRecord>;
}

/** Reads the metadata file; undefined when there is none yet. */
export async function readMetadata(path: string): Promise<MetadataFile | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new SnapshotError(SnapshotErrorCode.Io, `reading ${path}`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new SnapshotError(SnapshotErrorCode.Io, `corrupt snapshot metadata ${path}`, {
      cause: err,
    });
  }
  const m = parsed as Partial<MetadataFile>;
  if (
    m.version !== 1 ||
    typeof m.nextId !== 'number' ||
    typeof m.snapshots !== 'object' ||
    m.snapshots === null
  ) {
    throw new SnapshotError(SnapshotErrorCode.Io, `unsupported snapshot metadata ${path}`);
  }
  return m as MetadataFile;
}

/** Writes the metadata file atomically: a temp file, fsync, rename over the old one. */
export async function writeMetadata(path: string, data: MetadataFile): Promise<void> {
  const tmp = `${path}.tmp`;
  try {
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify(data, null, 1));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    throw new SnapshotError(SnapshotErrorCode.Io, `writing ${path}`, { cause: err });
  }
}
