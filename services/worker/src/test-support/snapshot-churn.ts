/**
 * A process that changes snapshots until it is killed (the snapshotter's crash test,
 * `snapshot/crash.test.ts`): `node snapshot-churn.mjs <root> <prefix>`. Rounds of four
 * concurrent prepare + write + commit (so that group commits batch several changes), each
 * round on the previous round's first snapshot, and the removal of the previous round's other
 * three. Prints `committed <key>` once a commit resolved, `removing <key>` before a removal
 * starts and `removed <key>` once it resolved.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { OverlaySnapshotter } from '../snapshot/index.js';

const [root, prefix] = process.argv.slice(2);
if (root === undefined || prefix === undefined) throw new Error('usage: <root> <prefix>');
const s = await OverlaySnapshotter.open({ root });
const say = (line: string): boolean => process.stdout.write(`${line}\n`);
let parent: string | undefined;
for (let i = 0; ; i++) {
  const keys = [0, 1, 2, 3].map((j) => `${prefix}-${i}-${j}`);
  await Promise.all(
    keys.map(async (key, j) => {
      await s.prepare(`active-${key}`, parent);
      await writeFile(join((await s.upperDir(`active-${key}`))!, `f-${key}`), key);
      await s.commit(key, `active-${key}`);
      say(`committed ${key}`);
      if (i > 0 && j > 0) {
        const old = `${prefix}-${i - 1}-${j}`;
        say(`removing ${old}`);
        await s.remove(old);
        say(`removed ${old}`);
      }
    }),
  );
  parent = keys[0];
}
