/**
 * The checksum of a context from its manifest is the checksum of the tree written from it, read
 * back from the disk: the same digest for every dep the manifest can answer.
 */
import { createHash } from 'node:crypto';
import { chmod, lstat, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LocalManifest, ManifestEntry } from '@kiln/bus';
import { FsBlobStore } from '@kiln/store';
import type { Digest } from '@kiln/store';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeManifestTree } from '../sources/local/manifest-tree.js';
import { depChecksum } from './dep-checksum.js';
import type { DepChecksumSpec } from './dep-checksum.js';
import { manifestChecksum } from './manifest-checksum.js';

let dir: string;
let root: string;
let store: FsBlobStore;
const entries: ManifestEntry[] = [];

const t = 1_700_000_000_000;
const dirE = (path: string, perm: number, uid = 0, gid = 0): ManifestEntry => ({
  path,
  mode: 0o040000 | perm,
  uid,
  gid,
  size: 0,
  mtimeMs: t,
});
const linkE = (path: string, target: string): ManifestEntry => ({
  path,
  mode: 0o120777,
  uid: 0,
  gid: 0,
  size: 0,
  linkname: target,
  mtimeMs: t,
});
async function fileE(
  path: string,
  perm: number,
  body: string,
  uid = 0,
  gid = 0,
): Promise<ManifestEntry> {
  const data = Buffer.from(body);
  const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  await store.put(digest as Digest, data, { size: data.length });
  return { path, mode: 0o100000 | perm, uid, gid, size: data.length, digest, mtimeMs: t };
}

const dep = (selectors: string[], o: Partial<DepChecksumSpec> = {}): DepChecksumSpec => ({
  selectors,
  wildcard: false,
  followLinks: false,
  includePatterns: [],
  excludePatterns: [],
  ...o,
});

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kiln-manifest-checksum-'));
  store = new FsBlobStore({ root: join(dir, 'store') });
  root = join(dir, 'root');
  // Names whose order differs by code unit, odd modes and owners, links in and out.
  entries.push(
    await fileE('A', 0o644, 'upper'),
    await fileE('a', 0o4755, 'setuid', 1000, 1000),
    await fileE('a-b', 0o600, ''),
    dirE('a.d', 0o2775, 0, 50),
    await fileE('a.d/x.txt', 0o644, 'x'),
    linkE('a.d/up', '../A'),
    dirE('sub', 0o1777),
    dirE('sub/keep', 0o700, 7, 8),
    await fileE('sub/keep/k.txt', 0o640, 'keep'),
    await fileE('sub/other.md', 0o644, 'other'),
    linkE('out', '/etc/passwd'),
    linkE('dangling', 'nowhere'),
    await fileE('é', 0o644, 'accent'),
    await fileE('z.txt', 0o644, 'z'),
  );
  const m: LocalManifest = { entries };
  await mkdir(root);
  await writeManifestTree(store, m, root);
  await chmod(root, 0o751);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('manifestChecksum', () => {
  it('gives the digest the tree gives, for every dep it answers', async () => {
    const st = await lstat(root);
    const deps = [
      dep(['/']),
      dep(['']),
      dep(['.']),
      dep(['/a']),
      dep(['a.d']),
      dep(['/sub/keep/k.txt']),
      dep(['/', '/a-b', 'sub']),
      dep(['out']),
      dep(['a.d/up']),
      dep(['/'], { followLinks: true }),
      dep(['/'], { includePatterns: ['*.txt'] }),
      dep(['/'], { includePatterns: ['**/*.txt'] }),
      dep(['/'], { excludePatterns: ['sub'] }),
      dep(['/'], { excludePatterns: ['sub', '!sub/keep'] }),
      dep(['sub'], { excludePatterns: ['*.md'] }),
      dep(['/'], { wildcard: true }),
    ];
    for (const d of deps) {
      const fromManifest = manifestChecksum(entries, st, d);
      expect(fromManifest, JSON.stringify(d)).toBeDefined();
      expect(fromManifest, JSON.stringify(d)).toBe(await depChecksum(root, d));
    }
  });

  it('leaves to the tree what needs a symlink followed, a wildcard or a missing path', async () => {
    const st = await lstat(root);
    for (const d of [
      dep(['a.d/up'], { followLinks: true }),
      dep(['a.d/up/x']),
      dep(['*.txt'], { wildcard: true }),
      dep(['missing']),
    ])
      expect(manifestChecksum(entries, st, d), JSON.stringify(d)).toBeUndefined();
  });

  it('changes with any content, mode or owner of what the selector covers', async () => {
    const st = await lstat(root);
    const base = manifestChecksum(entries, st, dep(['/']));
    const i = entries.findIndex((e) => e.path === 'sub/keep/k.txt');
    const variants = [
      { ...entries[i]!, digest: `sha256:${'0'.repeat(64)}` },
      { ...entries[i]!, mode: 0o100644 },
      { ...entries[i]!, uid: 1 },
    ];
    for (const v of variants) {
      const changed = entries.map((e, j) => (j === i ? v : e));
      expect(manifestChecksum(changed, st, dep(['/']))).not.toBe(base);
    }
    // Another root owner or mode counts too; a change outside the selector does not.
    expect(manifestChecksum(entries, { ...st, mode: st.mode ^ 0o1 }, dep(['/']))).not.toBe(base);
    const outside = entries.map((e) => (e.path === 'z.txt' ? { ...e, uid: 9 } : e));
    expect(manifestChecksum(outside, st, dep(['sub']))).toBe(
      manifestChecksum(entries, st, dep(['sub'])),
    );
  });
});
