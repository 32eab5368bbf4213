import { KilnError, registerErrorClass } from '@kiln/protocol';
import type { KilnErrorOptions } from '@kiln/protocol';

/** Stable codes of {@link SnapshotError}. */
export const SnapshotErrorCode = {
  /** No snapshot with that key or name. */
  NotFound: 'SNAPSHOT_NOT_FOUND',
  /** A snapshot with that key or name already exists. */
  Exists: 'SNAPSHOT_EXISTS',
  /** The snapshot is acquired, mounted or has children: it cannot be removed. */
  InUse: 'SNAPSHOT_IN_USE',
  /** The operation does not apply to a snapshot of that kind (commit a view, parent an active one...). */
  InvalidState: 'SNAPSHOT_INVALID_STATE',
  /** A mount, a copy or the metadata file failed. */
  Io: 'SNAPSHOT_IO',
} as const;
export type SnapshotErrorCode = (typeof SnapshotErrorCode)[keyof typeof SnapshotErrorCode];

/** A snapshotter operation failed. `details.key` names the snapshot. */
export class SnapshotError extends KilnError {
  declare readonly code: SnapshotErrorCode;

  constructor(code: SnapshotErrorCode, message: string, opts: KilnErrorOptions = {}) {
    super(code, message, opts);
  }
}

for (const code of Object.values(SnapshotErrorCode)) {
  registerErrorClass(code, (m, d, r) => new SnapshotError(code, m, { details: d, retryable: r }));
}
