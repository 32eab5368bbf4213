/**
 * Where exporters' artifacts land on the client's machine: a `local` export's tar extracted into a
 * directory, a tarball (`tar`, `oci`, `docker`) written to a file. Both finish (`'finish'`) only
 * once everything is on disk, so `BuildSession.exportsWritten` means written.
 */
import { createWriteStream, mkdirSync } from 'node:fs';
import type { WriteStream } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { PassThrough, Writable } from 'node:stream';

/**
 * A `local` export's tar stream, extracted into `dest` (created if needed) by `@kiln/layers`'
 * `applyTar` (containerd's rules: nothing is written outside `dest`; `.wh.` names are files here,
 * not whiteouts).
 */
export function localDirWriter(dest: string): Writable {
  const pass = new PassThrough();
  let applied: Promise<unknown> | undefined;
  const start = (): Promise<unknown> =>
    (applied ??= mkdir(dest, { recursive: true })
      // The tar applier loads only for a local export (it is not on the client's common path).
      .then(() => import('@kiln/layers'))
      .then(({ applyTar }) => applyTar(pass, dest, { whiteouts: false })));
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      start().catch(() => undefined);
      if (pass.write(chunk)) cb();
      else pass.once('drain', () => cb());
    },
    final(cb) {
      pass.end();
      start().then(
        () => cb(),
        (e: unknown) => cb(e as Error),
      );
    },
  });
}

/**
 * A file written under a temporary name beside `dest` and renamed into place when complete: a
 * reader never sees half a tarball, and a failed or destroyed write leaves nothing behind.
 */
export function atomicFileWriter(dest: string): Writable {
  const tmp = `${dest}.kiln-tmp-${process.pid}`;
  let out: WriteStream | undefined;
  const file = (): WriteStream => (out ??= createWriteStream(tmp));
  mkdirSync(dirname(dest), { recursive: true });
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (file().write(chunk)) cb();
      else file().once('drain', () => cb());
    },
    final(cb) {
      const f = file();
      f.end(() => {
        rename(tmp, dest).then(
          () => cb(),
          (e: unknown) => cb(e as Error),
        );
      });
    },
    destroy(err, cb) {
      // A write still in flight then fails on the destroyed file stream: nothing to report (the
      // artifact is being discarded), and no listener would make it an uncaught exception.
      out?.on('error', () => undefined).destroy();
      void rm(tmp, { force: true }).finally(() => cb(err));
    },
  });
}
