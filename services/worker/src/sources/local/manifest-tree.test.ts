import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { lstat, readFile, readdir, readlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LocalManifest, ManifestEntry } from '@kiln/bus';
import { FsBlobStore } from '@kiln/store';
import type { Digest } from '@kiln/store';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyManifestDiff, validateManifest, writeManifestTree } from './manifest-tree.js';

const sha = (b: string | Buffer): string =>
  `sha256:${createHash('sha256').update(b).digest('hex')}`;
const T = Date.UTC(2024, 0, 2, 3, 4, 5);
const dir = (path: string, mode = 0o755): ManifestEntry => ({
  path,
  mode: 0o040000 | mode,
  uid: 0,
  gid: 0,
  size: 0,
  mtimeMs: T,
});
const file = (path: string, body: string, mode = 0o644): ManifestEntry => ({
  path,
  mode: 0o100000 | mode,
  uid: 0,
  gid: 0,
  size: Buffer.byteLength(body),
  digest: sha(body),
  mtimeMs: T,
});
const link = (path: string, target: string): ManifestEntry => ({
  path,
  mode: 0o120777,
  uid: 0,
  gid: 0,
  size: 0,
  linkname: target,
  mtimeMs: T,
});

let tmp: string;
let store: FsBlobStore;
beforeEach(() => {
  tmp = mkdtempSync(join(tmpdir(), 'kiln-manifest-tree-'));
  store = new FsBlobStore({ root: join(tmp, 'store'), fsync: false });
});
afterEach(() => rmSync(tmp, { recursive: true, force: true }));

async function put(...bodies: string[]): Promise<void> {
  for (const b of bodies) await store.put(sha(b) as Digest, Buffer.from(b));
}

/** Packs `entries` (files) into one blob, as the scheduler does; returns them with refs. */
async function pack(entries: ManifestEntry[], bodies: string[]): Promise<ManifestEntry[]> {
  const info = await store.put(undefined, Buffer.from(bodies.join('')));
  let offset = 0;
  return entries.map((e) => {
    const out = { ...e, pack: info.digest, offset };
    offset += e.size;
    return out;
  });
}

async function treeOf(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (abs: string, rel: string): Promise<void> => {
    for (const name of (await readdir(abs)).sort()) {
      const a = join(abs, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(a);
      if (st.isDirectory()) {
        await walk(a, r);
        out.push(`${r}/ ${(st.mode & 0o7777).toString(8)} ${st.mtimeMs}`);
      } else if (st.isSymbolicLink()) out.push(`${r} -> ${await readlink(a)} ${st.mtimeMs}`);
      else
        out.push(
          `${r} ${(st.mode & 0o7777).toString(8)} ${st.mtimeMs} ${await readFile(a, 'utf8')}`,
        );
    }
  };
  await walk(root, '');
  return out;
}

describe('manifest trees', () => {
  it('refuses unsafe manifests: escaping paths, duplicates, links or files used as parents', () => {
    const bad: ManifestEntry[][] = [
      [file('../x', 'x')],
      [file('/etc/passwd', 'x')],
      [dir('a'), file('a/./b', 'x')],
      [file('.', 'x')],
      [file('a/', 'x')],
      [dir('a'), file('a//b', 'x')],
      [dir('a'), file('a/..', 'x')],
      [file('', 'x')],
      [file('a\0b', 'x')],
      [file('a', 'x'), file('a', 'y')],
      [link('a', '/etc'), file('a/passwd', 'x')], // a link as a parent: would write outside
      [file('a', 'x'), file('a/b', 'y')],
      [file('a/b', 'x')], // parent not listed
      [{ ...file('a', 'x'), digest: 'md5:1' }],
      [{ ...file('a', 'x'), pack: sha('p'), offset: -1 }],
      [{ ...dir('dev'), mode: 0o020644 }], // a device
    ];
    for (const entries of bad)
      expect(() => validateManifest({ entries }), JSON.stringify(entries)).toThrow(
        expect.objectContaining({ code: 'SESSION_PROTOCOL' }) as Error,
      );
    expect(() =>
      validateManifest({
        entries: [dir('a'), file('a/b', 'x'), file('.hidden', 'x'), file('..a', 'x'), dir('a/b.')],
      }),
    ).not.toThrow();
  });

  it('writes a tree (blobs and packs) and rejects a pack slice that is not the file', async () => {
    await put('big\n');
    const packed = await pack(
      [file('d/a', 'alpha\n', 0o600), file('d/b', '', 0o755)],
      ['alpha\n', ''],
    );
    const m: LocalManifest = {
      entries: [dir('d', 0o750), ...packed, file('big', 'big\n'), link('l', 'd/a')],
    };
    const root = join(tmp, 'root');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(root);
    await writeManifestTree(store, m, root);
    expect(await treeOf(root)).toEqual([
      `big 644 ${T} big\n`,
      `d/a 600 ${T} alpha\n`,
      `d/b 755 ${T} `,
      `d/ 750 ${T}`,
      `l -> d/a ${T}`,
    ]);

    const lying = { entries: [{ ...packed[0]!, path: 'x', digest: sha('not alpha\n') }] };
    const root2 = join(tmp, 'root2');
    await mkdir(root2);
    await expect(writeManifestTree(store, lying, root2)).rejects.toMatchObject({
      code: 'SESSION_PROTOCOL',
    });
  });

  it('applies a difference that yields the same tree as a full write', async () => {
    await put('one\n', 'two\n', 'three\n', 'four\n');
    const prev: LocalManifest = {
      entries: [
        dir('a'),
        file('a/one', 'one\n'),
        file('a/two', 'two\n'),
        dir('gone'),
        file('gone/x', 'one\n'),
        link('l', 'a/one'),
        file('t', 'two\n'),
      ],
    };
    const next: LocalManifest = {
      entries: [
        dir('a', 0o700),
        file('a/one', 'one\n', 0o600), // mode only
        file('a/two', 'three\n'), // content
        dir('n'),
        dir('n/m'),
        file('n/m/f', 'four\n'),
        link('l', 'a/two'), // target
        dir('t'), // a file became a directory
        file('t/x', 'two\n'),
      ],
    };
    const { mkdir } = await import('node:fs/promises');
    const diffRoot = join(tmp, 'diff');
    const fullRoot = join(tmp, 'full');
    await mkdir(diffRoot);
    await mkdir(fullRoot);
    await writeManifestTree(store, prev, diffRoot);
    const stats = await applyManifestDiff(store, prev, next, diffRoot);
    await writeManifestTree(store, next, fullRoot);
    expect(await treeOf(diffRoot)).toEqual(await treeOf(fullRoot));
    expect(existsSync(join(diffRoot, 'gone'))).toBe(false);
    // gone/ (with gone/x), a/two, l and t went; a/two, n, n/m, n/m/f, l, t, t/x were written.
    expect(stats).toMatchObject({ removed: 4, written: 7, restamped: 1 });
  });
});
