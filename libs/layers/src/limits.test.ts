import { readdir, rm } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { buildTar, makeTempDir, treeBytes } from '@kiln/testing';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyLayer, applyTar } from './apply-layer.js';
import { LayerError, LayerErrorCode } from './errors.js';

const MiB = 1024 * 1024;

/** A gzip bomb: `files` files of `size` zero bytes each; a few kB compressed. */
async function bomb(files: number, size: number): Promise<Buffer> {
  const entries = Array.from({ length: files }, (_, i) => ({
    name: `z${i}`,
    content: '\0'.repeat(size),
  }));
  return gzipSync(await buildTar(entries));
}

describe('unpack limits', () => {
  let work: string;
  beforeEach(() => {
    work = makeTempDir('limits').dir;
  });
  afterEach(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it('stops a gzip bomb at maxBytes before writing past it, naming the limit and the entry', async () => {
    const gz = await bomb(6, 2 * MiB);
    expect(gz.length).toBeLessThan(64 * 1024);
    const err = await applyLayer(Readable.from([gz]), work, {
      limits: { maxBytes: 5 * MiB },
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LayerError);
    const le = err as LayerError;
    expect(le.code).toBe(LayerErrorCode.LimitExceeded);
    expect(le.details).toMatchObject({ limit: 'maxBytes', max: 5 * MiB, entry: 'z2' });
    expect(le.message).toMatch(/more than 5242880 bytes/);
    // z0 and z1 fit; z2 was refused from its header: nothing past the bound is on disk.
    expect(await treeBytes(work)).toBe(4 * MiB);
  });

  it('stops an archive of many entries at maxEntries', async () => {
    const entries = Array.from({ length: 50 }, (_, i) => ({ name: `f${i}`, content: '' }));
    const err = await applyTar(Readable.from([await buildTar(entries)]), work, {
      whiteouts: false,
      limits: { maxEntries: 20 },
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: LayerErrorCode.LimitExceeded,
      details: { limit: 'maxEntries', max: 20, entry: 'f20' },
    });
    expect(await readdir(work)).toHaveLength(20);
  });

  it('applies what fits under the limits', async () => {
    const res = await applyLayer(Readable.from([await bomb(2, MiB)]), work, {
      limits: { maxBytes: 2 * MiB, maxEntries: 2 },
    });
    expect(res.entries).toBe(2);
    expect(await treeBytes(work)).toBe(2 * MiB);
  });
});
