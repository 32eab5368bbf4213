/**
 * A test file's reference buildkitd and local farms, for differentials: a temp dir, the farm
 * daemon bundled from source, buildkitd (`reference-buildkit.ts`) trusting the harness's
 * registry; every farm used and buildkitd stopped, and the dir removed, after the file.
 */
import { join } from 'node:path';
import { makeTempDir } from '../harness/index.js';
import { bundleFarmDaemon } from './local-farm-daemon.js';
import { startReferenceBuildkit } from './reference-buildkit.js';
import type { ReferenceBuildkit } from './reference-buildkit.js';
import { runKiln } from './run-kiln.js';
import { afterAll, beforeAll } from 'vitest';

export interface DifferentialSuite {
  /** The file's temp dir (valid once its beforeAll ran). */
  dir: () => string;
  /** The reference buildkitd. */
  bk: () => ReferenceBuildkit;
  /** The state dir of local farm `n` (each one a daemon with its own worker and store). */
  state: (n?: number) => string;
}

export function differentialSuite(name: string): DifferentialSuite {
  let tmp: { dir: string; remove: () => void } | undefined;
  let bk: ReferenceBuildkit | undefined;
  const used = new Set<number>();
  const dir = (): string => {
    if (!tmp) throw new Error('differentialSuite: used before its beforeAll');
    return tmp.dir;
  };
  beforeAll(async () => {
    const registry = process.env.KILN_TEST_REGISTRY;
    if (!process.env.KILN_TEST_FIXTURE_IMAGE || !registry)
      throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
    tmp = makeTempDir(name);
    process.env.KILN_FARM_DAEMON = await bundleFarmDaemon(join(tmp.dir, 'bundle'));
    bk = await startReferenceBuildkit(join(tmp.dir, 'buildkit'), registry);
  }, 180_000);
  afterAll(async () => {
    await bk?.stop();
    for (const n of used) await runKiln(['farm', 'stop'], { KILN_STATE_DIR: state(n) });
    delete process.env.KILN_FARM_DAEMON;
    tmp?.remove();
  });
  const state = (n = 0): string => {
    used.add(n);
    return join(dir(), n === 0 ? 'kiln-state' : `kiln-state-${n}`);
  };
  return {
    dir,
    bk: () => {
      if (!bk) throw new Error('differentialSuite: buildkitd is not started');
      return bk;
    },
    state,
  };
}
