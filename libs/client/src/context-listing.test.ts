import { createHash } from 'node:crypto';
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mknod, lstatDir } from '@kiln/sys';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '@kiln/protocol';
import { Listing, lstatDirPortable, sessionManifestMessage, stampOf } from './context-listing.js';
import { FileDigestCache } from './hash-cache.js';

let dir: string;
let ctx: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-listing-'));
  ctx = join(dir, 'ctx');
  const files: Record<string, string> = {
    Dockerfile: 'FROM scratch\n',
    'src/a.txt': 'a\n',
    'src/b.txt': 'b\n',
    'src/deep/c.txt': 'c\n',
    'logs/x.log': 'log\n',
    'logs/keep.log': 'kept\n',
    'empty-of-txt/y.bin': 'y\n',
    'é/z.txt': 'z\n',
  };
  for (const [p, text] of Object.entries(files)) {
    mkdirSync(join(ctx, p, '..'), { recursive: true });
    writeFileSync(join(ctx, p), text);
  }
  symlinkSync('src/a.txt', join(ctx, 'link'));
  mknod(join(ctx, 'fifo'), 0o010644);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const sha = (s: string) => `sha256:${createHash('sha256').update(s).digest('hex')}`;

describe('lstatDirPortable', () => {
  it("answers what @kiln/sys's lstatDir answers", () => {
    for (const d of [ctx, join(ctx, 'src'), join(ctx, 'é')])
      expect(lstatDirPortable(d), d).toEqual(lstatDir(d));
  });
});

describe('Listing.walk', () => {
  it('lists every entry, a directory before what is below it, digests from the cache', async () => {
    const cache = new FileDigestCache(join(dir, 'digests')).root(ctx);
    // One file's digest is cached (deliberately not its content's: the cache is trusted).
    cache.set('src/b.txt', stampOf(lstatSync(join(ctx, 'src/b.txt'), { bigint: true })), sha('B'));
    const l = (await Listing.walk(ctx, {}, cache))!;
    expect(l.paths).toEqual([
      'Dockerfile',
      'empty-of-txt',
      'empty-of-txt/y.bin',
      'link',
      'logs',
      'logs/keep.log',
      'logs/x.log',
      'src',
      'src/a.txt',
      'src/b.txt',
      'src/deep',
      'src/deep/c.txt',
      'é',
      'é/z.txt',
    ]);
    expect(l.files).toEqual(l.paths.filter((p) => lstatSync(join(ctx, p)).isFile()));
    expect(l.toHash.map((f) => l.paths[f.index])).toEqual(l.files.filter((f) => f !== 'src/b.txt'));
    for (const f of l.toHash) expect(f.abs).toBe(join(ctx, l.paths[f.index]!));
    const entries = l.entries(0, l.length);
    const byPath = new Map(entries.map((e) => [e.path, e]));
    expect(byPath.get('src/b.txt')?.digest).toBe(sha('B'));
    expect(byPath.get('src/a.txt')?.digest).toBeUndefined(); // not hashed yet
    expect(byPath.get('link')?.linkname).toBe('src/a.txt');
    for (const e of entries) {
      const st = lstatSync(join(ctx, e.path!), { bigint: true });
      expect([e.mode, e.uid, e.gid], e.path!).toEqual([st.mode, st.uid, st.gid].map(Number));
      expect(e.size, e.path!).toBe(Number(st.size));
      expect(BigInt(e.mtimeUnixNano!.toString()), e.path!).toBe(st.mtimeNs);
    }
    expect(l.entries(2, 4).map((e) => e.path)).toEqual(['empty-of-txt/y.bin', 'link']);
  });

  it('applies include and exclude patterns as fsutil walks', async () => {
    const cache = new FileDigestCache().root(ctx);
    const l = (await Listing.walk(
      ctx,
      {
        includePatterns: ['src', 'logs', '**/*.txt'],
        excludePatterns: ['logs', '!logs/keep.log', 'src/deep'],
      },
      cache,
    ))!;
    // logs/ is excluded but walked for the re-included file; empty-of-txt/ holds nothing
    // included and is left out; src/deep/ is excluded and not walked.
    expect(l.paths).toEqual([
      'logs',
      'logs/keep.log',
      'src',
      'src/a.txt',
      'src/b.txt',
      'é',
      'é/z.txt',
    ]);
  });

  it('has a digest that changes with any field of any entry', async () => {
    const cache = new FileDigestCache().root(ctx);
    const digest = async () => {
      const l = (await Listing.walk(ctx, {}, cache))!;
      expect(() => l.digest()).toThrow(/not hashed/);
      for (const f of l.toHash.splice(0)) l.digests[f.index] = sha(f.abs);
      return l.digest();
    };
    const d0 = await digest();
    expect(await digest()).toBe(d0);
    const t = new Date('2020-01-02T03:04:05Z');
    utimesSync(join(ctx, 'src/deep/c.txt'), t, t);
    const d1 = await digest();
    expect(d1).not.toBe(d0);
    writeFileSync(join(ctx, 'src/new.txt'), 'n\n');
    expect(await digest()).not.toBe(d1);
    rmSync(join(ctx, 'src/new.txt'));
  });

  it('gives up a walk ahead past maxEntries or once ended', async () => {
    const cache = new FileDigestCache().root(ctx);
    expect(await Listing.walk(ctx, {}, cache, { maxEntries: 5 })).toBeUndefined();
    expect(
      await Listing.walk(ctx, {}, cache, { maxEntries: 100, ended: () => true }),
    ).toBeUndefined();
    expect(await Listing.walk(ctx, {}, cache, { maxEntries: 100 })).toBeInstanceOf(Listing);
  });
});

describe('Listing.manifestChunks', () => {
  it('encodes what protobufjs encodes, chunk by chunk, the digest on the last', async () => {
    const cache = new FileDigestCache().root(ctx);
    const l = (await Listing.walk(ctx, {}, cache))!;
    for (const f of l.toHash.splice(0)) l.digests[f.index] = sha(f.abs);
    // Entries no directory here has: a long non-ASCII path, a size past 2^32, mtimes before
    // 1970 (a negative int64: ten bytes) and past 2^53 ns, a large uid.
    const extra: [string, number[], string, string][] = [
      [`${'ü'.repeat(300)}/x`, [0o100644, 70000, 5, 2 ** 33 + 7, 0xfffffff0, -1], sha('x'), ''],
      ['z-link', [0o120777, 0, 0, 0, 0x12345678, 0x7fffffff], '', 't'.repeat(200)],
      ['z-dir', [0o040755, 2 ** 31, 1, 0, 0, 0], '', ''],
    ];
    for (const [p, n, d, k] of extra) {
      l.paths.push(p);
      l.nums.push(...n);
      l.digests.push(d);
      l.links.push(k);
    }
    const per = 4;
    const chunks = l.manifestChunks(per);
    expect(chunks).toHaveLength(Math.ceil(l.length / per));
    expect(l.manifestChunks(per)).toBe(chunks); // made once
    chunks.forEach((c, i) => {
      const last = i === chunks.length - 1;
      const want = control.ContextManifest.encode(
        control.ContextManifest.create({
          entries: l.entries(i * per, (i + 1) * per),
          // `more` false is proto3's default: not written (as protobufjs when it is not set).
          ...(last ? { digest: l.digest() } : { more: true }),
        }),
      ).finish();
      expect(control.ContextManifest.decode(c).toJSON(), `chunk ${i}`).toEqual(
        control.ContextManifest.decode(want).toJSON(),
      );
      expect(Buffer.compare(c, Buffer.from(want)), `chunk ${i} bytes`).toBe(0);
    });
    const all = chunks.flatMap((c) => control.ContextManifest.decode(c).entries);
    expect(all.map((e) => e.path)).toEqual(l.paths);
    expect(all.find((e) => e.path?.endsWith('/x'))?.mtimeUnixNano?.toString()).toBe('-16');
  });

  it('makes one empty, final chunk of an empty listing', () => {
    const l = new Listing(new FileDigestCache().root('/nowhere'));
    const chunks = l.manifestChunks(10);
    expect(chunks).toHaveLength(1);
    const m = control.ContextManifest.decode(chunks[0]!);
    expect([m.entries.length, m.more, m.digest]).toEqual([0, false, l.digest()]);
  });

  it('wraps a chunk as a SessionMessage with its id', () => {
    const l = new Listing(new FileDigestCache().root('/nowhere'));
    const chunk = l.manifestChunks(10)[0]!;
    for (const id of [0, 1, 300, 2 ** 40 + 3]) {
      const m = control.SessionMessage.decode(sessionManifestMessage(id, chunk));
      expect(Number(m.id), String(id)).toBe(id);
      expect(m.manifest?.digest).toBe(l.digest());
    }
  });
});
