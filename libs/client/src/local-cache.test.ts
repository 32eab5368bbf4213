// The client's writer of a `type=local` cache export (an OCI layout tar from the farm into a
// directory on the user's machine): real tar streams (tar-stream's packer) into a temp dir.
import { mkdtempSync, readFileSync, readdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { afterEach, describe, expect, it } from 'vitest';
import { KilnError } from '@kiln/protocol';
import { localCacheWriter } from './local-cache.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'kiln-local-cache-'));
  dirs.push(d);
  return d;
}

type Entry = {
  name: string;
  data?: Buffer | string;
  type?: 'file' | 'symlink' | 'directory';
  linkname?: string;
};
async function write(dest: string, entries: Entry[]): Promise<void> {
  const pack = tar.pack();
  for (const e of entries) {
    if (e.type === 'symlink') pack.entry({ name: e.name, type: 'symlink', linkname: e.linkname });
    else if (e.type === 'directory') pack.entry({ name: e.name, type: 'directory' });
    else pack.entry({ name: e.name }, e.data ?? '');
  }
  pack.finalize();
  await pipeline(pack, localCacheWriter(dest));
}

const index = (tag: string, digest: string): string =>
  JSON.stringify({
    schemaVersion: 2,
    manifests: [
      {
        mediaType: 'application/vnd.oci.image.index.v1+json',
        digest,
        size: 2,
        annotations: { 'org.opencontainers.image.ref.name': tag },
      },
    ],
  });

describe('localCacheWriter', () => {
  it('writes blobs (a 24 MiB one streamed) and merges index.json by tag', async () => {
    const dest = tempDir();
    const big = Buffer.alloc(24 * 1024 * 1024, 7);
    await write(dest, [
      { name: 'blobs/', type: 'directory' },
      { name: 'blobs/sha256/aaa', data: big },
      { name: 'index.json', data: index('latest', 'sha256:aaa') },
    ]);
    expect(readFileSync(join(dest, 'blobs/sha256/aaa')).equals(big)).toBe(true);
    await write(dest, [
      { name: 'blobs/sha256/bbb', data: 'b' },
      { name: 'index.json', data: index('v2', 'sha256:bbb') },
    ]);
    const merged = JSON.parse(readFileSync(join(dest, 'index.json'), 'utf8')) as {
      manifests: { digest: string }[];
    };
    expect(merged.manifests.map((m) => m.digest).sort()).toEqual(['sha256:aaa', 'sha256:bbb']);
    expect(readdirSync(join(dest, 'blobs/sha256')).sort()).toEqual(['aaa', 'bbb']);
  });

  it.each<[string, Entry[]]>([
    ['a name climbing out', [{ name: '../escape', data: 'x' }]],
    ['an absolute name', [{ name: '/tmp/kiln-abs-escape', data: 'x' }]],
    ['a symlink', [{ name: 'blobs/sha256/l', type: 'symlink', linkname: '/etc/passwd' }]],
  ])('refuses %s with CACHE_EXPORT_INVALID and writes nothing outside', async (_what, entries) => {
    const dest = tempDir();
    const err = await write(dest, [
      ...entries,
      { name: 'index.json', data: index('t', 'sha256:x') },
    ]).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(KilnError);
    expect((err as KilnError).code).toBe('CACHE_EXPORT_INVALID');
    expect(existsSync(join(dest, '..', 'escape'))).toBe(false);
    expect(existsSync('/tmp/kiln-abs-escape')).toBe(false);
    expect(existsSync(join(dest, 'index.json'))).toBe(false);
  });

  it('refuses an export without index.json', async () => {
    const dest = tempDir();
    await expect(write(dest, [{ name: 'blobs/sha256/c', data: 'c' }])).rejects.toMatchObject({
      code: 'CACHE_EXPORT_INVALID',
    });
  });
});
