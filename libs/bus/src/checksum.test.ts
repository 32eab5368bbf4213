import { describe, expect, it } from 'vitest';
import { jsonBytes, thrownCode } from '@kiln/testing';
import {
  checksumSubject,
  decodeChecksumReply,
  decodeChecksumRequest,
  encodeChecksumJson,
  normalizeChecksumDep,
} from './checksum.js';

describe('checksum requests', () => {
  it('names one subject per worker and refuses ids that are not subject tokens', () => {
    expect(checksumSubject('w-1')).toBe('kiln.checksum.w-1');
    expect(thrownCode(() => checksumSubject('a.b'))).toBe('BUS_INVALID_NAME');
  });

  it('round-trips requests and replies, normalizing specs', () => {
    const dep = {
      selectors: ['/a', '/b/*'],
      wildcard: true,
      followLinks: false,
      includePatterns: ['x'],
      excludePatterns: [],
    };
    expect(decodeChecksumRequest(encodeChecksumJson({ resultId: 'r', deps: [dep] }))).toEqual({
      resultId: 'r',
      deps: [dep],
    });
    // Missing optional fields default; the field order is fixed (a stable memo key).
    const loose = decodeChecksumRequest(
      jsonBytes({ resultId: 'r', deps: [{ selectors: ['/a'] }] }),
    );
    expect(JSON.stringify(loose.deps[0])).toBe(
      JSON.stringify(
        normalizeChecksumDep({ ...dep, selectors: ['/a'], wildcard: false, includePatterns: [] }),
      ),
    );
    const reply = { results: [{ digest: 'sha256:1' }, { error: { code: 'C', message: 'm' } }] };
    expect(decodeChecksumReply(encodeChecksumJson(reply))).toEqual(reply);
    const err = { error: { code: 'CHECKSUM_RESULT_UNKNOWN', message: 'm' } };
    expect(decodeChecksumReply(encodeChecksumJson(err))).toEqual(err);
  });

  it('refuses malformed messages with CHECKSUM_PROTOCOL', () => {
    const bad = 'CHECKSUM_PROTOCOL';
    const req = (v: unknown) => thrownCode(() => decodeChecksumRequest(jsonBytes(v)));
    expect(thrownCode(() => decodeChecksumRequest(new TextEncoder().encode('{')))).toBe(bad);
    expect(req({ deps: [] })).toBe(bad);
    expect(req({ resultId: 'r', deps: [{ selectors: [] }] })).toBe(bad);
    expect(req({ resultId: 'r', deps: [{ selectors: [1] }] })).toBe(bad);
    expect(thrownCode(() => decodeChecksumReply(jsonBytes({ results: [{}] })))).toBe(bad);
    expect(thrownCode(() => decodeChecksumReply(jsonBytes(null)))).toBe(bad);
  });
});
