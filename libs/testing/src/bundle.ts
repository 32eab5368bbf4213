// Service entries bundled from source with esbuild (vitest's own dependency), for tests that run a
// service as a real process: no prior build is needed, and the process runs the code under test.

import { join } from 'node:path';
import { REPO_ROOT } from './util.js';

/**
 * Bundles each entry (`name` -> a path relative to the repository root) into `dir` as
 * `<name>.mjs`, in one esbuild run, and returns the files to run with node, by name. The bundles
 * find @kiln/sys's addon in this tree unless `addonPath` says where it will be (an image).
 */
export async function bundleEntries(
  entries: Readonly<Record<string, string>>,
  dir: string,
  o: { addonPath?: string } = {},
): Promise<Record<string, string>> {
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
        `process.env.KILN_SYS_ADDON ||= ${JSON.stringify(o.addonPath ?? join(REPO_ROOT, 'libs/sys/build/kiln_sys.node'))};`,
    },
  });
  return Object.fromEntries(Object.keys(entries).map((n) => [n, join(dir, `${n}.mjs`)]));
}
