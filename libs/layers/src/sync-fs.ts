/**
 * Metadata calls for tree walks, made synchronously. A walk of N entries with the promise API
 * costs several thread-pool round trips per entry (50-100 µs each on a loaded machine) in
 * series; the same lstat or readdir made synchronously costs a few µs, on data the kernel has
 * in its caches. Walks call {@link yielder}'s function between entries, so the event loop is
 * never held for more than a few milliseconds.
 */
import type { BigIntStats } from 'node:fs';
import {
  closeSync,
  lstatSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  readlinkSync,
} from 'node:fs';

export { readFileSync, readdirSync, readlinkSync };

/** lstat (bigint); undefined when the path or a parent of it does not exist. */
export function lstatMaybeSync(path: string): BigIntStats | undefined {
  try {
    return lstatSync(path, { bigint: true, throwIfNoEntry: false });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
    throw err;
  }
}

export function lstatBigSync(path: string): BigIntStats {
  return lstatSync(path, { bigint: true });
}

/** Files up to this size are read whole and synchronously by tree walks. */
export const SMALL_FILE = 256 * 1024;

/**
 * The contents of a file whose size is known to be `size` (an lstat of it): open, one read of up
 * to `size + 1` bytes, close (readFileSync adds an fstat). Undefined
 * when the file does not hold exactly `size` bytes (it changed meanwhile).
 */
export function readSmallSync(path: string, size: number): Buffer | undefined {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(size + 1);
    let n = 0;
    // A regular file answers less than asked only at its end: one read, then no other to find
    // the end (the byte past `size` is asked for, so a file that grew shows it).
    for (;;) {
      const want = size + 1 - n;
      const r = readSync(fd, buf, n, want, null);
      n += r;
      if (r === 0 || r < want || n > size) break;
    }
    return n === size ? buf.subarray(0, size) : undefined;
  } finally {
    closeSync(fd);
  }
}

/**
 * A function to await between entries of a walk: it yields to the event loop (setImmediate)
 * once `sliceMs` have passed since the last yield, and otherwise returns at once.
 */
export function yielder(sliceMs = 5): () => Promise<void> | undefined {
  let last = performance.now();
  return () => {
    const now = performance.now();
    if (now - last < sliceMs) return undefined;
    return new Promise<void>((resolve) =>
      setImmediate(() => {
        last = performance.now();
        resolve();
      }),
    );
  };
}
