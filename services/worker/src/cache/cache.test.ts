import { chmod, mkdir, mkdtemp, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  LinuxAmd64,
  copy,
  depSpecs,
  image,
  local,
  marshal,
  opCacheDigest,
  outputCacheKey,
  parseDefinition,
  sourceOpDigest,
  vertexCacheKey,
} from '@kiln/llb';
import { ChecksumError, checksum } from './contenthash.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'kiln-ch-'));
  await mkdir(join(root, 'src/lib'), { recursive: true });
  await writeFile(join(root, 'package.json'), '{"name":"x"}');
  await writeFile(join(root, 'src/a.ts'), 'a');
  await writeFile(join(root, 'src/lib/b.ts'), 'b');
  await writeFile(join(root, 'README.md'), 'readme');
});
afterEach(() => rm(root, { recursive: true, force: true }));

describe('content checksums', () => {
  it('depend on the selected content only, not on other files or mtimes', async () => {
    const before = await checksum(root, '/package.json');
    await writeFile(join(root, 'README.md'), 'changed');
    await utimes(join(root, 'package.json'), 1, 1);
    expect(await checksum(root, '/package.json')).toBe(before);
    await writeFile(join(root, 'package.json'), '{"name":"y"}');
    expect(await checksum(root, '/package.json')).not.toBe(before);
  });

  it('cover a directory recursively, including modes', async () => {
    const before = await checksum(root, '/src');
    await chmod(join(root, 'src/lib/b.ts'), 0o755);
    const afterMode = await checksum(root, '/src');
    expect(afterMode).not.toBe(before);
    await writeFile(join(root, 'src/lib/c.ts'), 'c');
    expect(await checksum(root, '/src')).not.toBe(afterMode);
  });

  it('expand wildcards and apply filters', async () => {
    const ts = await checksum(root, '/src/*.ts', { wildcard: true });
    await writeFile(join(root, 'src/lib/b.ts'), 'changed below the match');
    expect(await checksum(root, '/src/*.ts', { wildcard: true })).toBe(ts);
    const filtered = await checksum(root, '/', { filter: (p) => !p.endsWith('.md') });
    await writeFile(join(root, 'README.md'), 'ignored');
    expect(await checksum(root, '/', { filter: (p) => !p.endsWith('.md') })).toBe(filtered);
  });

  it('resolve symlinks inside the root, never outside', async () => {
    await symlink('/', join(root, 'escape'));
    await symlink('../../../../etc', join(root, 'up'));
    // Both resolve to the root itself, so they hash like the root.
    const whole = await checksum(root, '/');
    expect(await checksum(root, '/escape', { followLinks: true })).toBe(whole);
    await expect(checksum(root, '/up/passwd', { followLinks: true })).rejects.toBeInstanceOf(
      ChecksumError,
    );
  });
});

describe('cache keys', () => {
  const ctx = local('context');
  const def = (src: string) =>
    parseDefinition(
      marshal(image('busybox').file(copy(ctx, src, '/app/')), { platform: LinuxAmd64 }).toBytes(),
    );

  it('key a COPY source by content of its selector and the target by its key', () => {
    const g = def('/package.json');
    const op = g.ops.get(g.result.digest)!.op;
    const deps = depSpecs(op);
    expect(deps).toHaveLength(2);
    expect(deps[0]).toMatchObject({ contentBased: false });
    expect(deps[1]).toMatchObject({ contentBased: true, selectors: ['/package.json'] });
  });

  it('do not depend on input digests, and change when a dep changes', () => {
    const a = def('/package.json');
    const opA = a.ops.get(a.result.digest)!.op;
    const b = parseDefinition(
      marshal(image('alpine').file(copy(local('other'), '/package.json', '/app/')), {
        platform: LinuxAmd64,
      }).toBytes(),
    );
    const opB = b.ops.get(b.result.digest)!.op;
    expect(opCacheDigest(opA)).toBe(opCacheDigest(opB));
    const k1 = vertexCacheKey(opCacheDigest(opA), [
      { inputKey: 'sha256:base', selectors: [] },
      { inputKey: 'sha256:ctx1', contentDigest: 'sha256:pkg', selectors: ['/package.json'] },
    ]);
    const k2 = vertexCacheKey(opCacheDigest(opA), [
      { inputKey: 'sha256:base', selectors: [] },
      { inputKey: 'sha256:ctx2', contentDigest: 'sha256:pkg', selectors: ['/package.json'] },
    ]);
    expect(k1).toBe(k2);
    const k3 = vertexCacheKey(opCacheDigest(opA), [
      { inputKey: 'sha256:base2', selectors: [] },
      { inputKey: 'sha256:ctx2', contentDigest: 'sha256:pkg', selectors: ['/package.json'] },
    ]);
    expect(k3).not.toBe(k1);
    expect(outputCacheKey(k1, 0)).toBe(k1);
    expect(outputCacheKey(k1, 1)).not.toBe(k1);
  });

  it('leave the random local.unique attribute out of source keys', () => {
    const one = parseDefinition(marshal(local('context'), { localUniqueId: 'aaa' }).toBytes());
    const two = parseDefinition(marshal(local('context'), { localUniqueId: 'bbb' }).toBytes());
    const d1 = sourceOpDigest(one.ops.get(one.result.digest)!.op);
    expect(d1).toBe(sourceOpDigest(two.ops.get(two.result.digest)!.op));
    expect(one.result.digest).not.toBe(two.result.digest);
  });
});
