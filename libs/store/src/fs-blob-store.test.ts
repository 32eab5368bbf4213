import { execFile } from 'node:child_process';
import { chmod, mkdtemp, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { suppressedOf } from '@kiln/protocol';
import type { KilnError } from '@kiln/protocol';
import { describe, expect, it } from 'vitest';
import { StoreUnavailableError } from './errors.js';
import { blobStoreConformance } from './test-support/blob-store.conformance.js';
import { FsBlobStore } from './fs-blob-store.js';

blobStoreConformance('FsBlobStore', async () => {
  const root = await mkdtemp(join(tmpdir(), 'kiln-fs-store-'));
  const store = new FsBlobStore({ root });
  return {
    store,
    largeThreshold: 1024 * 1024,
    async corrupt(digest, bytes) {
      const path = store.pathOf(digest);
      await chmod(path, 0o644);
      await writeFile(path, bytes);
    },
    async rawEntries() {
      try {
        return (await readdir(join(root, 'blobs', 'sha256'))).sort();
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
        throw err;
      }
    },
    async cleanup() {
      await rm(root, { recursive: true, force: true });
    },
  };
});

const execFileP = promisify(execFile);

describe('FsBlobStore specifics', () => {
  it('a store that stops taking writes mid-put reports the failed write, not the cleanup after it', async () => {
    const root = await mkdtemp(join(tmpdir(), 'kiln-fs-store-'));
    const dir = join(root, 'blobs', 'sha256');
    // Immutable (chattr +i, as root): the open temp file takes no more writes and neither it nor
    // anything in its directory can be removed, as on a filesystem that turned read-only.
    const lock = async (flag: '+i' | '-i'): Promise<void> => {
      const names = (await readdir(dir)).map((n) => join(dir, n));
      await execFileP('chattr', [flag, ...names, dir]);
    };
    try {
      const store = new FsBlobStore({ root });
      await store.put(undefined, Buffer.from('seed')); // the directory exists
      async function* source(): AsyncIterable<Uint8Array> {
        yield Buffer.alloc(64 * 1024, 1);
        await lock('+i');
        yield Buffer.alloc(64 * 1024, 2);
      }
      const err = (await store.put(undefined, source()).catch((e: unknown) => e)) as KilnError;
      expect(err, String((err as Error).stack)).toBeInstanceOf(StoreUnavailableError);
      expect(err.message).toMatch(/^filesystem store: write: /);
      // The cleanup failed too: kept with the error, not reported instead of it.
      expect(suppressedOf(err)).toHaveLength(1);
      expect(String(suppressedOf(err)[0])).toMatch(/remove temp file after failed put/);
    } finally {
      await lock('-i').catch(() => undefined);
      await rm(root, { recursive: true, force: true });
    }
  });

  it('never lists temp files left by a crashed put, and removes stale ones', async () => {
    const root = await mkdtemp(join(tmpdir(), 'kiln-fs-store-'));
    try {
      const store = new FsBlobStore({ root });
      const kept = await store.put(undefined, Buffer.from('kept'));
      const dir = join(root, 'blobs', 'sha256');
      await writeFile(join(dir, '.tmp-crashed'), 'partial');
      await writeFile(join(dir, '.tmp-recent'), 'in flight');
      const old = new Date(Date.now() - 2 * 3600_000);
      await utimes(join(dir, '.tmp-crashed'), old, old);
      const listed = [];
      for await (const b of store.list()) listed.push({ digest: b.digest, size: b.size });
      expect(listed).toEqual([kept]);
      expect(await store.removeStaleTemps(3600_000)).toBe(1);
      expect((await readdir(dir)).sort()).toEqual([
        '.tmp-recent',
        kept.digest.slice('sha256:'.length),
      ]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('stores blobs read-only in the OCI layout', async () => {
    const root = await mkdtemp(join(tmpdir(), 'kiln-fs-store-'));
    try {
      const store = new FsBlobStore({ root });
      const { digest } = await store.put(undefined, Buffer.from('layout'));
      const st = await stat(join(root, 'blobs', 'sha256', digest.slice('sha256:'.length)));
      expect(st.mode & 0o777).toBe(0o444);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
