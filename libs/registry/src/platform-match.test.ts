import { describe, expect, it } from 'vitest';
import type { Descriptor } from './manifest.js';
import { selectPlatform } from './platform-match.js';

const d = (
  architecture: string,
  variant?: string,
  os = 'linux',
  annotations?: Record<string, string>,
): Descriptor => ({
  mediaType: 'application/vnd.oci.image.manifest.v1+json',
  digest: `sha256:${architecture.padEnd(8, '0')}${(variant ?? '').padEnd(4, '0')}${'0'.repeat(52)}`,
  size: 1,
  platform: variant === undefined ? { os, architecture } : { os, architecture, variant },
  ...(annotations ? { annotations } : {}),
});

describe('platform matching', () => {
  it('selects the exact entry, skips attestations, and lists what is available otherwise', () => {
    const entries = [
      d('unknown', undefined, 'unknown', { 'vnd.docker.reference.type': 'attestation-manifest' }),
      d('amd64'),
      d('arm', 'v6'),
      d('arm', 'v7'),
      d('arm64', 'v8'),
    ];
    expect(selectPlatform(entries, { os: 'linux', architecture: 'arm64' }).match).toBe(entries[4]);
    expect(selectPlatform(entries, { os: 'linux', architecture: 'arm' }).match).toBe(entries[3]);
    expect(selectPlatform(entries, { os: 'linux', architecture: 'x86_64' }).match).toBe(entries[1]);
    expect(selectPlatform(entries, { os: 'linux', architecture: 's390x' })).toEqual({
      match: undefined,
      available: ['linux/amd64', 'linux/arm/v6', 'linux/arm/v7', 'linux/arm64'],
    });
  });
});
