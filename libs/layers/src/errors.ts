import { KilnError, registerErrorClass } from '@kiln/protocol';
import type { ErrorDetails, KilnErrorOptions } from '@kiln/protocol';

/** Stable codes of {@link LayerError}. */
export const LayerErrorCode = {
  /** An entry would write outside the root: `..`, absolute, through an escaping symlink, a hardlink out, a device. */
  Unsafe: 'LAYER_UNSAFE',
  /** The archive is malformed (bad header, hardlink to a missing file, entry under a non-directory). */
  Invalid: 'LAYER_INVALID',
  /** The layer is compressed with something this worker cannot read or write. */
  UnsupportedCompression: 'LAYER_UNSUPPORTED_COMPRESSION',
  /** Reading the source tree or writing the target tree failed. */
  Io: 'LAYER_IO',
  /** The tar unpacks to more bytes or entries than the applier's limits (`details.limit`, `max`). */
  LimitExceeded: 'LAYER_LIMIT_EXCEEDED',
} as const;
export type LayerErrorCode = (typeof LayerErrorCode)[keyof typeof LayerErrorCode];

/** A layer could not be produced or applied. `details.entry` names the tar entry when there is one. */
export class LayerError extends KilnError {
  declare readonly code: LayerErrorCode;
  /** The offending tar entry name, if any. */
  readonly entry: string | undefined;

  constructor(
    code: LayerErrorCode,
    message: string,
    opts: KilnErrorOptions & { entry?: string } = {},
  ) {
    const details: ErrorDetails = { ...opts.details };
    if (opts.entry !== undefined) details.entry = opts.entry;
    super(code, opts.entry !== undefined ? `${message}: ${JSON.stringify(opts.entry)}` : message, {
      ...opts,
      details,
    });
    this.entry = opts.entry;
  }
}

for (const code of Object.values(LayerErrorCode)) {
  registerErrorClass(code, (m, d, r) => {
    const entry = typeof d.entry === 'string' ? d.entry : undefined;
    return new LayerError(code, m, { details: d, retryable: r, entry });
  });
}
