import { KilnError, registerErrorClass } from '@kiln/protocol';
import type { KilnErrorOptions } from '@kiln/protocol';

/** Stable codes of {@link FsError}. */
export const FsErrorCode = {
  /** A path (or an archive entry) would lead outside its root. */
  Unsafe: 'FS_UNSAFE_PATH',
  /** Too many symlinks while resolving a path: a loop, or a chain longer than the limit. */
  SymlinkLoop: 'FS_SYMLINK_LOOP',
  /** A path that must exist does not. */
  NotFound: 'FS_NOT_FOUND',
  /** A pattern (wildcard, include/exclude) is malformed. */
  BadPattern: 'FS_BAD_PATTERN',
  /** The tree holds something the operation refuses (a directory where a file goes...). */
  Conflict: 'FS_CONFLICT',
  /** An archive is malformed or uses an unsupported compression. */
  BadArchive: 'FS_BAD_ARCHIVE',
} as const;
export type FsErrorCode = (typeof FsErrorCode)[keyof typeof FsErrorCode];

/** A root-confined filesystem operation failed. `path` is relative to the root when known. */
export class FsError extends KilnError {
  declare readonly code: FsErrorCode;
  readonly path: string | undefined;

  constructor(code: FsErrorCode, message: string, opts: KilnErrorOptions & { path?: string } = {}) {
    super(code, opts.path !== undefined ? `${message}: ${JSON.stringify(opts.path)}` : message, {
      ...opts,
      details: { ...opts.details, ...(opts.path !== undefined ? { path: opts.path } : {}) },
    });
    this.path = opts.path;
  }
}

for (const code of Object.values(FsErrorCode)) {
  registerErrorClass(code, (m, d, r) => {
    const path = typeof d.path === 'string' ? d.path : undefined;
    const e = new FsError(code, m, { details: d, retryable: r });
    return path === undefined ? e : Object.assign(e, { path });
  });
}

/** The errno code of a Node.js system error, if any. */
export function errnoOf(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string'
    ? err.code
    : undefined;
}
