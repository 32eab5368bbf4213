import { reviveError } from '@kiln/protocol';
import { describe, expect, it } from 'vitest';
import {
  DigestMismatchError,
  ImageNotFoundError,
  ManifestInvalidError,
  PlatformNotFoundError,
  RegistryAuthError,
  RegistryRequestError,
  RegistryUnavailableError,
} from './errors.js';

describe('registry errors', () => {
  it('survive the wire: same class, code, retryable flag and fields', () => {
    const errors = [
      new RegistryUnavailableError('down'),
      new ImageNotFoundError('r/x:1'),
      new RegistryAuthError('h:1', 'denied'),
      new ManifestInvalidError('bad'),
      new PlatformNotFoundError('r/x:1', 'linux/s390x', ['linux/amd64', 'linux/arm64']),
      new RegistryRequestError(400, 'nope'),
      new DigestMismatchError(`sha256:${'a'.repeat(64)}`, `sha256:${'b'.repeat(64)}`),
    ];
    for (const e of errors) {
      const back = reviveError(e.code, e.message, e.details, e.retryable);
      expect(back).toBeInstanceOf(e.constructor);
      expect(back.message).toBe(e.message);
      expect(back.retryable).toBe(e.retryable);
      expect(back.details).toEqual(e.details);
    }
    expect(errors[0]!.retryable).toBe(true);
    expect(errors.slice(1).every((e) => !e.retryable)).toBe(true);
    const p = reviveError(errors[4]!.code, '', errors[4]!.details, false) as PlatformNotFoundError;
    expect(p.available).toEqual(['linux/amd64', 'linux/arm64']);
    expect(p.message).toBe(
      'r/x:1: no image for platform linux/s390x (available: linux/amd64, linux/arm64)',
    );
  });
});
