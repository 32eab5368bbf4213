import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  CacheFormatError,
  ImportedCache,
  INLINE_CACHE_KEY,
  cacheBlobs,
  exportCache,
  importInlineCache,
  inlineCacheValue,
  findInLayoutIndex,
  marshalCacheConfig,
  parseCacheConfig,
  putDescToLayoutIndex,
  splitCacheIndex,
} from './index.js';
import type { CacheNode, ResultLayer } from './index.js';

const testdata = join(import.meta.dirname, '..', 'testdata');
const d = (c: string) => `sha256:${c.repeat(64)}`;
const layer = (c: string): ResultLayer => ({
  digest: d(c),
  diffId: `sha256:${c.repeat(63)}0`,
  size: 10,
  mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
});

/** image -> run -> run2, with a second key on the image (BuildKit's config key). */
function graph() {
  const img: CacheNode = { digest: d('1'), inputs: [] };
  const imgConfig: CacheNode = { digest: d('2'), inputs: [] };
  const run: CacheNode = {
    digest: d('3'),
    inputs: [
      [
        { node: img, selector: '' },
        { node: imgConfig, selector: '' },
      ],
    ],
  };
  const run2: CacheNode = { digest: d('4'), inputs: [[{ node: run, selector: d('9') }]] };
  return { img, imgConfig, run, run2 };
}

/** The same graph as another build computes it: new objects, same digests. */
const again = graph;

describe('export and import', () => {
  it('round-trips: the same graph, computed again, hits each result with its whole chain', () => {
    const g = graph();
    const base = layer('a');
    const mid = layer('b');
    const top = layer('c');
    const results = new Map([
      [g.run, { layers: [base, mid], createdAt: '2026-01-01T00:00:00Z' }],
      [g.run2, { layers: [base, mid, top], createdAt: '2026-01-01T00:00:01Z' }],
    ]);
    const e = exportCache([g.run2, g.run], results);
    expect(e.layers.map((l) => l.digest)).toEqual([base.digest, mid.digest, top.digest]);
    // Records: both image keys, run, run2 (each once, inputs before the records linking them).
    expect(e.config.records).toHaveLength(4);
    const text = marshalCacheConfig(e.config);
    const imported = new ImportedCache(parseCacheConfig(text), e.layers);
    const h = again();
    expect(imported.hit(h.run2)?.layers).toEqual([base, mid, top]);
    expect(imported.hit(h.run)?.layers).toEqual([base, mid]);
    expect(imported.hit(h.img)).toBeUndefined();
    expect(imported.match(h.img)).toHaveLength(1);
  });

  it('matches through any one key of an input, and never across another selector or digest', () => {
    const g = graph();
    const e = exportCache(
      [g.run2],
      new Map([[g.run2, { layers: [layer('a')], createdAt: '2026-01-01T00:00:00Z' }]]),
    );
    const imported = new ImportedCache(e.config, e.layers);
    // Only the config key of the image is known this time (say, another tag of the same image).
    const cfg: CacheNode = { digest: d('2'), inputs: [] };
    const run: CacheNode = { digest: d('3'), inputs: [[{ node: cfg, selector: '' }]] };
    const run2 = (selector: string, digest = d('4')): CacheNode => ({
      digest,
      inputs: [[{ node: run, selector }]],
    });
    expect(imported.hit(run2(d('9')))).toBeDefined();
    expect(imported.hit(run2(d('8')))).toBeUndefined();
    expect(imported.hit(run2(d('9'), d('5')))).toBeUndefined();
    // Another image: nothing downstream matches.
    const other: CacheNode = { digest: d('6'), inputs: [] };
    const runOther: CacheNode = { digest: d('3'), inputs: [[{ node: other, selector: '' }]] };
    expect(imported.match(runOther)).toEqual([]);
  });

  it('needs a match through every input of a multi-input op', () => {
    const a: CacheNode = { digest: d('1'), inputs: [] };
    const b: CacheNode = { digest: d('2'), inputs: [] };
    const copy: CacheNode = {
      digest: d('3'),
      inputs: [[{ node: a, selector: '' }], [{ node: b, selector: d('9') }]],
    };
    const e = exportCache(
      [copy],
      new Map([[copy, { layers: [layer('a')], createdAt: '2026-01-01T00:00:00Z' }]]),
    );
    const imported = new ImportedCache(e.config, e.layers);
    const b2: CacheNode = { digest: d('7'), inputs: [] };
    const copy2: CacheNode = {
      digest: d('3'),
      inputs: [[{ node: a, selector: '' }], [{ node: b2, selector: d('9') }]],
    };
    expect(imported.hit(copy2)).toBeUndefined();
  });
});

describe("BuildKit v0.11.6's own export", () => {
  // `FROM busybox` / `WORKDIR /w` / `RUN ...` / `RUN ...`, exported with mode=max: layer parents
  // point forward, layers carry no annotations (diffIDs are on the index's descriptors).
  const { config, layers } = splitCacheIndex(
    readFileSync(join(testdata, 'buildkit-v0.11.6-index.json'), 'utf8'),
  );
  const cc = parseCacheConfig(readFileSync(join(testdata, 'buildkit-v0.11.6-config.json'), 'utf8'));

  it('is read: every result resolves to its full layer chain with diffIDs', () => {
    expect(config.mediaType).toBe('application/vnd.buildkit.cacheconfig.v0');
    const imported = new ImportedCache(cc, layers);
    // The last RUN's record is reached from the image's manifest key through the chain.
    const img: CacheNode = {
      digest: 'sha256:3ddc332f9b695b0129b3fd0f1c743fcb01cb130d47829669aee5cccd6df845fc',
      inputs: [],
    };
    const byDigest = new Map(cc.records!.map((r, i) => [i, r]));
    const node = (i: number): CacheNode => {
      const r = byDigest.get(i)!;
      return {
        digest: r.digest,
        inputs: (r.inputs ?? []).map((links) =>
          links.map((l) => ({
            node: l.link === 1 ? img : node(l.link),
            selector: l.selector ?? '',
          })),
        ),
      };
    };
    const last = cc.records!.findIndex((r) => r.layers?.[0]?.layer === 1);
    const hit = imported.hit(node(last));
    expect(hit?.layers.map((l) => l.digest.slice(7, 15))).toEqual([
      '502a1d75',
      'ee4a6027',
      '9ff55907',
      '91fc2d43',
    ]);
    for (const l of hit!.layers) expect(l.diffId).toMatch(/^sha256:[a-f0-9]{64}$/);
  });
});

describe('bad input', () => {
  it('is a CacheFormatError', () => {
    expect(() => parseCacheConfig('{')).toThrow(CacheFormatError);
    expect(() => splitCacheIndex('{"manifests":[]}')).toThrow(CacheFormatError);
    expect(
      () => new ImportedCache({ records: [{ digest: d('1'), inputs: [[{ link: 5 }]] }] }, []),
    ).toThrow(CacheFormatError);
    const loop = new ImportedCache(
      {
        layers: [
          { blob: d('a'), parent: 1, annotations: { diffID: d('b') } },
          { blob: d('c'), parent: 0, annotations: { diffID: d('d') } },
        ],
        records: [{ digest: d('1'), layers: [{ layer: 0 }] }],
      },
      [],
    );
    expect(() => loop.hit({ digest: d('1'), inputs: [] })).toThrow(CacheFormatError);
  });
});

describe('OCI layout', () => {
  it("tags the cache in index.json, replacing the tag's old entry and keeping the others", () => {
    const e = exportCache([], new Map());
    const blobs = cacheBlobs(e);
    const first = putDescToLayoutIndex(undefined, blobs.indexDesc, 'latest');
    const other = { ...blobs.indexDesc, digest: d('9') };
    const both = putDescToLayoutIndex(first, other, 'v2');
    const replaced = putDescToLayoutIndex(both, { ...blobs.indexDesc, digest: d('8') }, 'latest');
    expect(findInLayoutIndex(replaced, {}).digest).toBe(d('8'));
    expect(findInLayoutIndex(replaced, { tag: 'v2' }).digest).toBe(d('9'));
    expect(findInLayoutIndex(replaced, { digest: d('9') }).digest).toBe(d('9'));
    expect(() => findInLayoutIndex(replaced, { tag: 'nope' })).toThrow(CacheFormatError);
  });
});

describe('inline cache', () => {
  it("round-trips through an image config, the result's layers being the image's", () => {
    const g = graph();
    const chain = [layer('a'), layer('b'), layer('c')];
    const value = inlineCacheValue(
      exportCache(
        [g.run2],
        new Map([[g.run2, { layers: chain, createdAt: '2026-01-01T00:00:00Z' }]]),
      ),
    );
    const records = JSON.parse(Buffer.from(value!, 'base64').toString()) as {
      layers?: { layer: number }[];
    }[];
    // BuildKit's inline form: a result names the position of its top layer in the image.
    expect(records.flatMap((r) => r.layers ?? []).map((r) => r.layer)).toEqual([2]);
    const config = {
      [INLINE_CACHE_KEY]: value,
      rootfs: { type: 'layers', diff_ids: chain.map((l) => l.diffId) },
    };
    const imported = importInlineCache(
      config,
      chain.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    );
    expect(imported!.hit(again().run2)?.layers).toEqual(chain);
    expect(importInlineCache({ rootfs: {} }, [])).toBeUndefined();
    expect(() => importInlineCache({ [INLINE_CACHE_KEY]: value, rootfs: {} }, [])).toThrow(
      CacheFormatError,
    );
  });
});
