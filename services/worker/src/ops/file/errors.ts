import { KilnError, registerErrorClass } from '@kiln/protocol';
import type { KilnErrorOptions } from '@kiln/protocol';

/** Stable codes of {@link FileOpError}. */
export const FileOpErrorCode = {
  /** Any other failure of an action (I/O, a directory in the way, a bad definition...). */
  Failed: 'FILEOP_FAILED',
  /** A source path (or a path to remove, or a wildcard with no match) does not exist. */
  NotFound: 'FILEOP_NOT_FOUND',
  /** A path or an archive entry would lead outside its root. */
  UnsafePath: 'FILEOP_UNSAFE_PATH',
  /** Too many levels of symbolic links while resolving a path. */
  SymlinkLoop: 'FILEOP_SYMLINK_LOOP',
  /** A user or group name is not in the target's /etc/passwd or /etc/group. */
  UnknownUser: 'FILEOP_UNKNOWN_USER',
  /** A malformed wildcard or include/exclude pattern. */
  BadPattern: 'FILEOP_BAD_PATTERN',
  /** An archive ADD unpacks holds more bytes or entries than the worker's unpack limits. */
  UnpackLimit: 'FILEOP_UNPACK_LIMIT_EXCEEDED',
} as const;
export type FileOpErrorCode = (typeof FileOpErrorCode)[keyof typeof FileOpErrorCode];

/** A FileOp action failed. `details.action` is its index in the op, `details.path` the path at fault. */
export class FileOpError extends KilnError {
  declare readonly code: FileOpErrorCode;
  /** Index of the failing action in `FileOp.actions`, when known. */
  readonly actionIndex: number | undefined;
  /** Root-relative path at fault, when known. */
  readonly path: string | undefined;

  constructor(
    code: FileOpErrorCode,
    message: string,
    opts: KilnErrorOptions & { actionIndex?: number | undefined; path?: string | undefined } = {},
  ) {
    // The message leads with the path, as BuildKit's (`"/a.txt": not found`); the action's index
    // means nothing to a Dockerfile's author and stays in the details.
    const where = opts.path !== undefined ? JSON.stringify(opts.path) : undefined;
    const text =
      where === undefined
        ? message
        : message.startsWith(`${where}: `)
          ? message
          : `${where}: ${message.endsWith(`: ${where}`) ? message.slice(0, -where.length - 2) : message}`;
    super(code, text, {
      ...opts,
      details: {
        ...opts.details,
        ...(opts.actionIndex !== undefined ? { action: opts.actionIndex } : {}),
        ...(opts.path !== undefined ? { path: opts.path } : {}),
      },
    });
    this.actionIndex = opts.actionIndex;
    this.path = opts.path;
  }
}

for (const code of Object.values(FileOpErrorCode)) {
  registerErrorClass(code, (m, d, r) => {
    const e = new FileOpError(code, m, { details: d, retryable: r });
    return Object.assign(e, {
      actionIndex: typeof d.action === 'number' ? d.action : undefined,
      path: typeof d.path === 'string' ? d.path : undefined,
    });
  });
}
