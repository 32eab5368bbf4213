// Service entries bundled from source with esbuild (vitest's own dependency), for tests that run a
// service as a real process: no prior build is needed, and the process runs the code under test.

import { copyFile, mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT } from './util.js';

/**
 * Bundles each entry (`name` -> a path relative to the repository root) into `dir` as
 * `<name>.mjs`, in one esbuild run, and returns the files to run with node, by name. The bundles
 * find @kiln/sys's addon at `addonPath` when given (where an image will have it), else in `dir`,
 * where it is copied from this tree: a process of another user (a rootless worker) then needs to
 * read `dir` only, not the repository (a clone in a mode-0700 temp dir).
 */
export async function bundleEntries(
  entries: Readonly<Record<string, string>>,
  dir: string,
  o: { addonPath?: string } = {},
): Promise<Record<string, string>> {
  let addon = o.addonPath;
  if (addon === undefined) {
    const built = join(REPO_ROOT, 'libs/sys/build/kiln_sys.node');
    addon = join(dir, 'kiln_sys.node');
    await mkdir(dir, { recursive: true });
    // Copied under a temporary name, then renamed: a process already running from an earlier
    // bundle in `dir` has the old file mapped, and rewriting it in place would crash it.
    // Not built: the bundles name the tree's path, and @kiln/sys says to build it when used.
    const tmp = `${addon}.${process.pid}.${Date.now()}.tmp`;
    await copyFile(built, tmp)
      .then(() => rename(tmp, addon!))
      .catch(async () => {
        await rm(tmp, { force: true });
        addon = built;
      });
  }
  const esbuild = (await import(/* @vite-ignore */ 'esbuild')) as {
    build(o: Record<string, unknown>): Promise<unknown>;
  };
  await esbuild.build({
    entryPoints: Object.fromEntries(
      Object.entries(entries).map(([name, path]) => [name, join(REPO_ROOT, path)]),
    ),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    conditions: ['kiln-source'],
    outdir: dir,
    outExtension: { '.js': '.mjs' },
    logLevel: 'warning',
    banner: {
      js:
        "import { createRequire as __kilnRequire } from 'node:module'; const require = __kilnRequire(import.meta.url); " +
        // @kiln/sys finds its addon through its package, which a bundle elsewhere has not.
        `process.env.KILN_SYS_ADDON ||= ${JSON.stringify(addon)};`,
    },
  });
  return Object.fromEntries(Object.keys(entries).map((n) => [n, join(dir, `${n}.mjs`)]));
}
