/** A sandbox for tests of code confined to roots: anything written beside them is caught. */
import { mkdir, readFile, readdir, realpath, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir } from './util.js';

export interface Sandbox {
  /** The temp dir (its real path), holding the roots and `outside/sentinel`. */
  readonly base: string;
  /**
   * Fails unless `base` holds only the roots, `outside` and `allowed` names, and `outside` only
   * the unchanged sentinel: nothing outside the roots was created, changed or removed.
   */
  assertUntouched(allowed?: readonly string[]): Promise<void>;
  remove(): void;
}

/** A fresh sandbox with the directories `roots` (names in `base`) and `outside/sentinel`. */
export async function makeSandbox(prefix: string, roots: readonly string[]): Promise<Sandbox> {
  const tmp = makeTempDir(prefix);
  const base = await realpath(tmp.dir);
  for (const d of [...roots, 'outside']) await mkdir(join(base, d));
  await writeFile(join(base, 'outside', 'sentinel'), 'keep');
  return {
    base,
    remove: tmp.remove,
    assertUntouched: async (allowed = []) => {
      const names = (await readdir(base)).filter((n) => !allowed.includes(n)).sort();
      const want = [...roots, 'outside'].sort();
      const outside = await readdir(join(base, 'outside'));
      const sentinel = await readFile(join(base, 'outside', 'sentinel'), 'utf8').catch(() => '');
      if (
        names.join('\n') !== want.join('\n') ||
        outside.join() !== 'sentinel' ||
        sentinel !== 'keep'
      )
        throw new Error(
          `written outside the roots: ${JSON.stringify({ base: names, outside, sentinel })}`,
        );
    },
  };
}
