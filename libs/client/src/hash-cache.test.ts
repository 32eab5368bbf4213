import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileDigestCache } from './hash-cache.js';

const D1 = `sha256:${'1'.repeat(64)}`;
const D2 = `sha256:${'2'.repeat(64)}`;
/** size 10, mtime n, ctime 5, inode 7. */
const stamp = (n: number) => `10\t${n}\t5\t7`;
/** The file a root's digests are kept in. */
const rootFile = (cacheDir: string, root: string) =>
  join(cacheDir, createHash('sha256').update(root).digest('hex').slice(0, 32));
const header = (root: string) => `kiln-context-digests v2\t${root}\n`;

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-hash-cache-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('FileDigestCache', () => {
  it('persists digests between instances, valid only while the stamp is unchanged', async () => {
    const cacheDir = join(dir, 'sub', 'digests');
    const a = new FileDigestCache(cacheDir).root('/ctx');
    await a.load();
    a.set('a.txt', stamp(1), D1);
    a.set('b.txt', stamp(1), D2);
    await a.save();
    const b = new FileDigestCache(cacheDir).root('/ctx');
    await b.load();
    expect(b.get('a.txt', stamp(1))).toBe(D1);
    expect(b.get('b.txt', stamp(2))).toBeUndefined(); // mtime changed
    expect(b.get('b.txt', '10\t1\t5\t8')).toBeUndefined(); // replaced file
    expect(b.get('b.txt', '10\t1\t6\t7')).toBeUndefined(); // touched
    expect(b.get('c.txt', stamp(1))).toBeUndefined();
    // Another root's files are its own, even at the same relative paths.
    const other = new FileDigestCache(cacheDir).root('/other');
    await other.load();
    expect(other.get('a.txt', stamp(1))).toBeUndefined();
  });

  it('reads only the files of the roots it is asked for', async () => {
    const cacheDir = join(dir, 'digests');
    const big = new FileDigestCache(cacheDir).root('/big');
    await big.load();
    for (let i = 0; i < 50_000; i++) big.set(`dir/file-${i}`, stamp(i), D1);
    await big.save();
    const small = new FileDigestCache(cacheDir).root('/small');
    await small.load();
    small.set('one', stamp(1), D2);
    await small.save();
    const bigSize = statSync(rootFile(cacheDir, '/big')).size;
    const smallSize = statSync(rootFile(cacheDir, '/small')).size;
    expect(bigSize).toBeGreaterThan(1_000_000);

    const cache = new FileDigestCache(cacheDir);
    const r = cache.root('/small');
    await r.load();
    expect(r.get('one', stamp(1))).toBe(D2);
    expect(cache.bytesRead).toBe(smallSize);
    // A root never built reads nothing.
    const none = new FileDigestCache(cacheDir);
    await none.root('/new').load();
    expect(none.bytesRead).toBe(0);
    // And the big root is still there for its own builds.
    const again = new FileDigestCache(cacheDir);
    const b = again.root('/big');
    await b.load();
    expect(b.get('dir/file-49999', stamp(49_999))).toBe(D1);
    expect(again.bytesRead).toBe(bigSize);
  });

  it('ignores a corrupt line, a foreign file or another root, and replaces them on save', async () => {
    const cacheDir = join(dir, 'digests');
    const file = rootFile(cacheDir, '/ctx');
    mkdirSync(cacheDir);
    writeFileSync(
      file,
      `${header('/ctx')}a.txt\t10\t1\t5\t7\t${D1}\nb.txt\t10\tnot-a-number\n` +
        `c.txt\t10\t1\t5\t7\tsha256:short\nd.txt\t10\t1\t5\t7\t${D2}\textra\n`,
    );
    const a = new FileDigestCache(cacheDir).root('/ctx');
    await a.load();
    expect(a.get('a.txt', stamp(1))).toBe(D1);
    expect(a.get('b.txt', stamp(1))).toBeUndefined();
    expect(a.get('c.txt', stamp(1))).toBeUndefined();
    expect(a.get('d.txt', stamp(1))).toBeUndefined();
    a.set('b.txt', stamp(1), D2);
    await a.save();
    // Only well-formed lines are written back.
    expect(readFileSync(file, 'utf8')).toBe(
      `${header('/ctx')}a.txt\t10\t1\t5\t7\t${D1}\nb.txt\t10\t1\t5\t7\t${D2}\n`,
    );
    const b = new FileDigestCache(cacheDir).root('/ctx');
    await b.load();
    expect(b.get('b.txt', stamp(1))).toBe(D2);

    for (const text of [
      'something else entirely\n',
      `${header('/elsewhere')}b.txt\t10\t1\t5\t7\t${D2}\n`,
      `kiln-context-digests v1\n/ctx/b.txt\t10\t1\t5\t7\t${D2}\n`,
    ]) {
      writeFileSync(file, text);
      const c = new FileDigestCache(cacheDir).root('/ctx');
      await c.load();
      expect(c.get('b.txt', stamp(1)), text).toBeUndefined();
    }
  });

  it('replaces the one-file cache of older versions at its path by the directory', async () => {
    const cacheDir = join(dir, 'context-digests');
    writeFileSync(cacheDir, `kiln-context-digests v1\n/ctx/a.txt\t10\t1\t5\t7\t${D1}\n`);
    const a = new FileDigestCache(cacheDir).root('/ctx');
    await a.load();
    expect(a.get('a.txt', stamp(1))).toBeUndefined();
    a.set('a.txt', stamp(1), D1);
    await a.save();
    expect(statSync(cacheDir).isDirectory()).toBe(true);
    const b = new FileDigestCache(cacheDir).root('/ctx');
    await b.load();
    expect(b.get('a.txt', stamp(1))).toBe(D1);
  });

  it('keeps at most maxEntries a root, those used by this process first', async () => {
    const cacheDir = join(dir, 'digests');
    const a = new FileDigestCache(cacheDir, { maxEntries: 3 }).root('/r');
    await a.load();
    for (let i = 0; i < 3; i++) a.set(`old/${i}`, stamp(1), D1);
    await a.save();
    const b = new FileDigestCache(cacheDir, { maxEntries: 3 }).root('/r');
    await b.load();
    expect(b.get('old/2', stamp(1))).toBe(D1);
    b.set('new/0', stamp(1), D2);
    b.set('new/1', stamp(1), D2);
    await b.save();
    const lines = readFileSync(rootFile(cacheDir, '/r'), 'utf8').trim().split('\n').slice(1);
    expect(lines).toHaveLength(3);
    const paths = lines.map((l) => l.split('\t')[0]);
    expect(paths).toEqual(expect.arrayContaining(['old/2', 'new/0', 'new/1']));
  });

  it('keeps at most maxFiles roots and maxBytes, removing those used longest ago', async () => {
    const cacheDir = join(dir, 'digests');
    const save = async (root: string, n: number, bounds = {}) => {
      const r = new FileDigestCache(cacheDir, bounds).root(root);
      await r.load();
      for (let i = 0; i < n; i++) r.set(`f${i}`, stamp(i), D1);
      await r.save();
    };
    const age = (root: string, secondsAgo: number) => {
      const t = new Date(Date.now() - secondsAgo * 1000);
      utimesSync(rootFile(cacheDir, root), t, t);
    };
    await save('/r1', 1);
    age('/r1', 300);
    await save('/r2', 1);
    age('/r2', 200);
    await save('/r3', 1);
    age('/r3', 100);
    // A build of r1 whose digests all hold renews it (its file is not rewritten).
    const r1 = new FileDigestCache(cacheDir).root('/r1');
    await r1.load();
    expect(r1.get('f0', stamp(0))).toBe(D1);
    await r1.save();
    // A new root past maxFiles 3: the one used longest ago (r2) goes.
    await save('/r4', 1, { maxFiles: 3 });
    expect(existsSync(rootFile(cacheDir, '/r2'))).toBe(false);
    for (const r of ['/r1', '/r3', '/r4']) expect(existsSync(rootFile(cacheDir, r)), r).toBe(true);
    // Past maxBytes: older roots go, the one saved stays even alone over the bound.
    age('/r4', 50);
    await save('/r5', 100, { maxBytes: 10_000 });
    const left = readdirSync(cacheDir).sort();
    const sizeOf = (r: string) => statSync(rootFile(cacheDir, r)).size;
    expect(sizeOf('/r5')).toBeLessThan(10_000);
    expect(left).toContain(rootFile(cacheDir, '/r5').slice(cacheDir.length + 1));
    expect(left).toHaveLength(4); // r5 and, newest first, r1 (renewed), r4, r3: all small
    await save('/r6', 200, { maxBytes: 1_000 });
    expect(readdirSync(cacheDir)).toEqual([rootFile(cacheDir, '/r6').slice(cacheDir.length + 1)]);
  });

  it('keeps a root whose path cannot be written in memory only', async () => {
    const cacheDir = join(dir, 'digests');
    const a = new FileDigestCache(cacheDir).root('/odd\tname');
    await a.load();
    a.set('a', stamp(1), D1);
    expect(a.get('a', stamp(1))).toBe(D1);
    await a.save();
    expect(existsSync(cacheDir)).toBe(false);
  });
});
