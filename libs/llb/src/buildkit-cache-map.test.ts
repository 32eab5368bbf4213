import { describe, expect, it } from 'vitest';
import { pb } from '@kiln/protocol';
import { buildkitCacheMap, buildkitRecordDigest, imageConfigCacheDigest } from './index.js';

// Record digests from a cache that BuildKit v0.11.6 exported (`buildctl build --export-cache
// type=local,mode=max`) for `FROM <registry>/busybox:latest` on linux/amd64: the image source's
// manifest key and config key.
const MANIFEST = 'sha256:1c94d1886936e49d435312ef2558ee2315bde484fd21f2a7d5c8fc1c859ab76a';
const DIFF_ID = 'sha256:01aa0abd8d4c952e907c4f6ab5c81be604dfeab4f822aee9494e3750a466a402';
const amd64 = { OS: 'linux', Architecture: 'amd64' };

describe('BuildKit cache maps', () => {
  it("keys a digest-pinned image source as BuildKit's manifest key", () => {
    const op = pb.Op.create({
      source: { identifier: `docker-image://127.0.0.1:45613/busybox:latest@${MANIFEST}` },
      platform: amd64,
    });
    const cm = buildkitCacheMap(op, amd64);
    expect(buildkitRecordDigest(cm!.digest, 0)).toBe(
      'sha256:3ddc332f9b695b0129b3fd0f1c743fcb01cb130d47829669aee5cccd6df845fc',
    );
    // The registry's address is not part of it: the same image elsewhere meets the same key.
    const moved = pb.Op.create({
      source: { identifier: `docker-image://registry.example/busybox@${MANIFEST}` },
      platform: amd64,
    });
    expect(buildkitCacheMap(moved, amd64)!.digest).toBe(cm!.digest);
    // Another platform is another key.
    const arm = pb.Op.create({
      source: { identifier: `docker-image://registry.example/busybox@${MANIFEST}` },
      platform: { OS: 'linux', Architecture: 'arm64' },
    });
    expect(buildkitCacheMap(arm, amd64)!.digest).not.toBe(cm!.digest);
  });

  it("keys an image's config as BuildKit does: the chain id of its layers", () => {
    expect(buildkitRecordDigest(imageConfigCacheDigest(DIFF_ID), 0)).toBe(
      'sha256:fa81f33dbd132012aadeba73c8da7d1898a286cf9d55f58497fc39f6a657037a',
    );
  });

  it('has none for sources BuildKit keys by session or that are not pinned', () => {
    const local = pb.Op.create({ source: { identifier: 'local://context' } });
    expect(buildkitCacheMap(local, amd64)).toBeUndefined();
    const tag = pb.Op.create({ source: { identifier: 'docker-image://busybox:latest' } });
    expect(buildkitCacheMap(tag, amd64)).toBeUndefined();
  });

  it('keys exec ops without mount selectors, proxy env and extra host IPs, and links selectors', () => {
    const exec = (selector: string, proxy: string, ip: string) =>
      pb.Op.create({
        inputs: [
          { digest: 'sha256:a', index: 0 },
          { digest: 'sha256:b', index: 0 },
        ],
        exec: {
          meta: {
            args: ['sh', '-c', 'true'],
            cwd: '/',
            proxyEnv: proxy ? { httpProxy: proxy } : null,
            extraHosts: [{ Host: 'h', IP: ip }],
          },
          mounts: [
            { input: 0, dest: '/', output: 0 },
            { input: 1, dest: '/src', selector, readonly: true, output: -1 },
          ],
        },
      });
    const a = buildkitCacheMap(exec('/x', '', '1.2.3.4'), amd64)!;
    const b = buildkitCacheMap(exec('/y', 'http://proxy', '5.6.7.8'), amd64)!;
    expect(a.digest).toBe(b.digest);
    expect(a.deps[0]!.selector).toBe('');
    expect(a.deps[1]!.selector).not.toBe(b.deps[1]!.selector);
    expect(a.deps[1]!.selector).toMatch(/^sha256:[a-f0-9]{64}$/);
    // The platform is part of an exec's key.
    expect(
      buildkitCacheMap(exec('/x', '', ''), { OS: 'linux', Architecture: 'arm64' })!.digest,
    ).not.toBe(a.digest);
  });
});
