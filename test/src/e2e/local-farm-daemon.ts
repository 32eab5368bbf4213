/**
 * The local farm daemon for tests: bundled from source (so tests run the code under test, no
 * build needed) and named by `KILN_FARM_DAEMON`, which `kiln build` and `kiln farm` then start.
 */
import { bundleEntries } from '../harness/index.js';

/** Bundles `cli/src/farm/daemon.ts` into `dir`; returns the file to set as KILN_FARM_DAEMON. */
export async function bundleFarmDaemon(dir: string): Promise<string> {
  const files = await bundleEntries({ 'kiln-farm': 'cli/src/farm/daemon.ts' }, dir);
  return files['kiln-farm']!;
}
