/**
 * A test file's own local farm for in-process `kiln build` runs: a temp dir with the farm's state
 * dir, the daemon bundled from source, the farm stopped and everything removed after the file.
 * Builds take the fixture busybox image as `BASE`.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { makeTempDir } from '../harness/index.js';
import { bundleFarmDaemon } from './local-farm-daemon.js';
import { runKiln } from './run-kiln.js';

export interface LocalFarmSuite {
  /** The file's temp dir (valid once its beforeAll ran). */
  dir: () => string;
  /** A fresh context dir holding `files` (name -> content). */
  context: (files: Record<string, string>) => Promise<string>;
  /** `kiln build CTX --progress plain --build-arg BASE=<fixture> ...extra`, in-process. */
  build: (ctx: string, ...extra: string[]) => Promise<{ code: number; out: string }>;
}

export function localFarmSuite(name: string): LocalFarmSuite {
  const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
  let tmp: { dir: string; remove: () => void } | undefined;
  let n = 0;
  beforeAll(async () => {
    if (!fixture)
      throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
    tmp = makeTempDir(name);
    process.env.KILN_STATE_DIR = join(tmp.dir, 'state');
    process.env.KILN_FARM_DAEMON = await bundleFarmDaemon(join(tmp.dir, 'bundle'));
  }, 120_000);
  afterAll(async () => {
    await runKiln(['farm', 'stop']);
    delete process.env.KILN_STATE_DIR;
    delete process.env.KILN_FARM_DAEMON;
    tmp?.remove();
  });
  const dir = (): string => {
    if (!tmp) throw new Error('localFarmSuite: used before its beforeAll ran');
    return tmp.dir;
  };
  return {
    dir,
    context: async (files) => {
      const d = join(dir(), `ctx${n++}`);
      await mkdir(d, { recursive: true });
      for (const [f, body] of Object.entries(files)) await writeFile(join(d, f), body);
      return d;
    },
    build: (ctx, ...extra) =>
      runKiln(['build', ctx, '--progress', 'plain', '--build-arg', `BASE=${fixture}`, ...extra]),
  };
}
