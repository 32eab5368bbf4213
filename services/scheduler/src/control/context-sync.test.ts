import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PassThrough } from 'node:stream';
import type { LocalManifest, ManifestEntry } from '@kiln/bus';
import { FsBlobStore } from '@kiln/store';
import type { Digest } from '@kiln/store';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PackIndex, localSyncRequest, syncContext } from './context-sync.js';
import type { ContextSource } from './context-sync.js';

const sha = (b: string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const req = { dir: 'context', includePatterns: [], excludePatterns: [], followPaths: [] };

let tmp: string;
let store: FsBlobStore;
beforeEach(() => {
  tmp = mkdtempSync(join(tmpdir(), 'kiln-context-sync-'));
  store = new FsBlobStore({ root: join(tmp, 'store'), fsync: false });
});
afterEach(() => rmSync(tmp, { recursive: true, force: true }));

/**
 * A client whose files are `files` (what it sends) and whose manifest says `listed`. It answers
 * `unchanged` as the session's client does: when asked with the digest of its listing now.
 * `listings` counts the full listings it sent, `unchanged` its answers without one.
 */
function client(
  listed: Record<string, string>,
  files: Record<string, string> = listed,
): ContextSource & { asked: string[][]; listings: number; unchanged: number } {
  const asked: string[][] = [];
  const c = {
    asked,
    listings: 0,
    unchanged: 0,
    manifest: (_r: unknown, ifChangedFrom?: string) => {
      const entries = Object.entries(listed).map(([path, body]): ManifestEntry => ({
        path,
        mode: 0o100644,
        uid: 0,
        gid: 0,
        size: Buffer.byteLength(body),
        digest: sha(body),
        mtimeMs: 0,
      }));
      const digest = sha(JSON.stringify(entries));
      if (ifChangedFrom === digest) {
        c.unchanged++;
        return Promise.resolve('unchanged' as const);
      }
      c.listings++;
      return Promise.resolve({ entries, digest });
    },
    files: (_dir: string, paths: string[], sink: PassThrough) => {
      asked.push(paths);
      for (const p of paths) sink.write(files[p] ?? '');
      sink.end();
      return Promise.resolve();
    },
  };
  return c;
}

async function manifestOf(digest: string): Promise<LocalManifest> {
  const chunks: Buffer[] = [];
  for await (const c of await store.get(digest as Digest)) chunks.push(c as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString()) as LocalManifest;
}

describe('syncContext', () => {
  it('packs small files, keeps big ones whole, and asks again only for what changed', async () => {
    const big = 'B'.repeat(70_000);
    const index = new PackIndex();
    const c1 = client({ 'a.txt': 'a\n', 'b.txt': 'b\n', 'big.bin': big, empty: '' });
    const d1 = await syncContext(store, c1, req, 'k', index);
    const m1 = await manifestOf(d1);
    expect(c1.asked).toEqual([['a.txt', 'b.txt', 'empty'], ['big.bin']]);
    expect(await store.has(sha(big) as Digest)).toBe(true);
    const a = m1.entries.find((e) => e.path === 'a.txt')!;
    expect(a.pack).toBe(m1.entries.find((e) => e.path === 'b.txt')!.pack);
    expect(m1.entries.find((e) => e.path === 'b.txt')!.offset).toBe(2);

    const c2 = client({ 'a.txt': 'a\n', 'b.txt': 'b2\n', 'big.bin': big, empty: '' });
    const m2 = await manifestOf(await syncContext(store, c2, req, 'k', index));
    expect(c2.asked).toEqual([['b.txt']]);
    expect(m2.entries.find((e) => e.path === 'a.txt')!.pack).toBe(a.pack);

    // A scheduler that never saw the context (restarted): the worker's base manifest says where
    // the packed files are.
    const c4 = client({ 'a.txt': 'a\n', 'b.txt': 'b3\n', empty: '' });
    await syncContext(store, c4, { ...req, base: d1 }, 'k', new PackIndex());
    expect(c4.asked).toEqual([['b.txt']]);

    // Another context (no shared key): nothing to reuse but what is in the store by digest.
    const c3 = client({ 'a.txt': 'a\n', 'big.bin': big });
    await syncContext(store, c3, req, '', index);
    expect(c3.asked).toEqual([['a.txt']]);
  });

  it('skips the listing of an unchanged context: the last manifest, its blobs still there', async () => {
    const big = 'B'.repeat(70_000);
    const files = { 'a.txt': 'a\n', 'b.txt': 'b\n', 'big.bin': big };
    const index = new PackIndex();
    const first = client(files);
    const d1 = await syncContext(store, first, req, 'k', index);
    expect(first.listings).toBe(1);

    // The same listing again: the client answers unchanged, nothing else is asked or written.
    const again = client(files);
    const stats = { files: 0, fetched: 0, packs: 0, unchanged: false };
    expect(await syncContext(store, again, req, 'k', index, stats)).toBe(d1);
    expect(again).toMatchObject({ listings: 0, unchanged: 1, asked: [] });
    expect(stats.unchanged).toBe(true);

    // A changed file: the client lists in full, and only that file crosses the wire.
    const changed = client({ ...files, 'b.txt': 'b2\n' });
    const d2 = await syncContext(store, changed, req, 'k', index);
    expect(d2).not.toBe(d1);
    expect(changed).toMatchObject({ listings: 1, unchanged: 0, asked: [['b.txt']] });

    // Another tenant (or another shared key) is never asked with this context's digest.
    const other = client({ ...files, 'b.txt': 'b2\n' });
    await syncContext(store, other, req, 'k', index, undefined, 'tenant-b');
    expect(other).toMatchObject({ listings: 1, unchanged: 0 });
  });

  it('lists in full when a blob of the last sync is gone from the store', async () => {
    const big = 'B'.repeat(70_000);
    const files = { 'a.txt': 'a\n', 'big.bin': big };
    const index = new PackIndex();
    const d1 = await syncContext(store, client(files), req, 'k', index);
    await store.delete(sha(big) as Digest);
    const c = client(files);
    const stats = { files: 0, fetched: 0, packs: 0, unchanged: false };
    expect(await syncContext(store, c, req, 'k', index, stats)).toBe(d1);
    // Asked with the digest (unchanged), then in full: the lost file is fetched again.
    expect(c).toMatchObject({ unchanged: 1, listings: 1, asked: [['big.bin']] });
    expect(stats.unchanged).toBe(false);
    expect(await store.has(sha(big) as Digest)).toBe(true);
  });

  it('fails when a file changed during the sync, and stores neither its pack nor a manifest', async () => {
    const c = client({ 'a.txt': 'a\n', 'b.txt': 'b\n' }, { 'a.txt': 'a\n', 'b.txt': 'B\n' });
    await expect(syncContext(store, c, req, 'k', new PackIndex())).rejects.toMatchObject({
      code: 'LOCAL_CHANGED',
    });
    const blobs: string[] = [];
    for await (const b of store.list()) blobs.push(b.digest);
    expect(blobs).toEqual([]);
  });

  it('fails with the client refusing a big file, its sink destroyed before the store reads it', async () => {
    const big = 'B'.repeat(70_000);
    const c = client({ 'big.bin': big });
    // As the session does when the client answers an error: the sink is destroyed with it at
    // once (no uncaught 'error' event may end the process), and the request rejects.
    c.files = (_dir, _paths, sink) => {
      const err = Object.assign(new Error("context:big.bin is not in the directory's manifest"), {
        code: 'LOCAL_NOT_SERVED',
      });
      sink.destroy(err);
      return Promise.reject(err);
    };
    await expect(syncContext(store, c, req, 'k', new PackIndex())).rejects.toMatchObject({
      code: 'LOCAL_NOT_SERVED',
    });
    expect(await store.has(sha(big) as Digest)).toBe(false);
  });
});

describe('localSyncRequest', () => {
  it("reads a local source op's directory and patterns; other ops and malformed attrs give none", () => {
    const op = (identifier: string, attrs: Record<string, string> = {}) => ({
      source: { identifier, attrs },
    });
    expect(
      localSyncRequest(
        op('local://context', {
          'local.includepattern': '["src"]',
          'local.excludepatterns': '["*.log"]',
          'local.followpaths': '["src/a"]',
          'local.session': 's1',
        }),
      ),
    ).toEqual({
      dir: 'context',
      includePatterns: ['src'],
      excludePatterns: ['*.log'],
      followPaths: ['src/a'],
    });
    expect(localSyncRequest(op('local://ctx'))).toEqual({
      dir: 'ctx',
      includePatterns: [],
      excludePatterns: [],
      followPaths: [],
    });
    expect(localSyncRequest(op('docker-image://busybox'))).toBeUndefined();
    expect(localSyncRequest({ exec: {} })).toBeUndefined();
    expect(localSyncRequest(op('local://c', { 'local.followpaths': '{"a":1}' }))).toBeUndefined();
    expect(localSyncRequest(op('local://c', { 'local.includepattern': '[' }))).toBeUndefined();
  });
});
