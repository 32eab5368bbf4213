import { describe, expect, it } from 'vitest';
import { InvalidPlatformError } from './platform.js';
import {
  formatPlatform,
  hostPlatform,
  normalizePlatform,
  parsePlatform,
  platformFromPb,
  platformMatches,
  platformToPb,
} from './platform.js';

describe('Platform', () => {
  it('normalizes as containerd does', () => {
    expect(formatPlatform({ os: 'Linux', architecture: 'x86_64' })).toBe('linux/amd64');
    expect(formatPlatform({ os: 'linux', architecture: 'aarch64' })).toBe('linux/arm64');
    expect(formatPlatform({ os: 'linux', architecture: 'arm64', variant: 'v8' })).toBe(
      'linux/arm64',
    );
    expect(formatPlatform({ os: 'linux', architecture: 'arm' })).toBe('linux/arm/v7');
    expect(formatPlatform({ os: 'linux', architecture: 'amd64', variant: 'v1' })).toBe(
      'linux/amd64',
    );
    expect(
      platformMatches(
        { os: 'linux', architecture: 'arm64' },
        { os: 'linux', architecture: 'arm64', variant: 'v8' },
      ),
    ).toBe(true);
    expect(
      platformMatches(
        { os: 'linux', architecture: 'arm', variant: 'v7' },
        { os: 'linux', architecture: 'arm', variant: 'v6' },
      ),
    ).toBe(false);
    expect(
      platformMatches(
        { os: 'linux', architecture: 'amd64' },
        { os: 'windows', architecture: 'amd64' },
      ),
    ).toBe(false);
  });

  it('parses os/arch[/variant] and bare known architectures; refuses anything else', () => {
    expect(parsePlatform('Linux/ARM64/v8')).toEqual({ os: 'linux', architecture: 'arm64' });
    expect(parsePlatform(' linux/arm ')).toEqual({
      os: 'linux',
      architecture: 'arm',
      variant: 'v7',
    });
    expect(parsePlatform('aarch64')).toEqual({ os: 'linux', architecture: 'arm64' });
    expect(formatPlatform(parsePlatform('linux/arm/6'))).toBe('linux/arm/v6');
    for (const bad of ['linux', 'linux/', 'linux//x', '/amd64', 'a/b/c/d', ''])
      expect(() => parsePlatform(bad), bad).toThrow(InvalidPlatformError);
    expect(() => parsePlatform('linux/')).toThrow(
      'invalid platform "linux/": want os/arch[/variant]',
    );
  });

  it('normalizes os and i386, keeps osVersion and osFeatures', () => {
    expect(normalizePlatform({ os: 'MacOS', architecture: 'i386', variant: 'x' })).toEqual({
      os: 'darwin',
      architecture: '386',
    });
    expect(
      normalizePlatform({
        os: 'windows',
        architecture: 'amd64',
        osVersion: '10.0',
        osFeatures: ['a'],
      }),
    ).toEqual({ os: 'windows', architecture: 'amd64', osVersion: '10.0', osFeatures: ['a'] });
    expect(hostPlatform().os).toBe(process.platform);
  });

  it('converts to and from the LLB message', () => {
    expect(platformToPb({ os: 'linux', architecture: 'arm', variant: 'v7' })).toEqual({
      OS: 'linux',
      Architecture: 'arm',
      Variant: 'v7',
    });
    expect(platformFromPb({ OS: 'linux', Architecture: 'amd64', Variant: '' })).toEqual({
      os: 'linux',
      architecture: 'amd64',
    });
    expect(platformFromPb({ OS: 'linux' })).toBeUndefined();
    expect(platformFromPb(undefined)).toBeUndefined();
    expect(platformMatches(undefined, undefined)).toBe(true);
    expect(platformMatches({ os: 'linux', architecture: 'amd64' }, undefined)).toBe(false);
  });
});
