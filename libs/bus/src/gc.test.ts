import { describe, expect, it } from 'vitest';
import { GcProtocolError, decodeGcReply, decodeGcRequest, encodeGcJson, gcSubject } from './gc.js';
import type { GcRequest, GcUsageRecord } from './gc.js';

const rec: GcUsageRecord = {
  id: 'r-1',
  mutable: false,
  inUse: false,
  size: 4096,
  parents: ['layer-abc'],
  createdAtMs: 1,
  lastUsedAtMs: 2,
  usageCount: 3,
  description: 'result sha256:x',
  recordType: 'regular',
  shared: false,
};

describe('gc subject and codec', () => {
  it('names one subject per worker', () => {
    expect(gcSubject('w-1')).toBe('kiln.gc.w-1');
    expect(() => gcSubject('a.b')).toThrow();
  });

  it('round-trips requests and replies', () => {
    expect(decodeGcRequest(encodeGcJson({ op: 'du', filter: ['type==regular'] }))).toEqual({
      op: 'du',
      filter: ['type==regular'],
    });
    const prune: GcRequest = {
      op: 'prune',
      filter: [],
      all: true,
      keepDurationMs: 5,
      keepBytes: 7,
    };
    expect(decodeGcRequest(encodeGcJson(prune))).toEqual(prune);
    expect(decodeGcReply(encodeGcJson({ records: [rec] }))).toEqual({ records: [rec] });
    expect(decodeGcReply(encodeGcJson({ error: { code: 'GC_FAILED', message: 'm' } }))).toEqual({
      error: { code: 'GC_FAILED', message: 'm' },
    });
  });

  it('rejects malformed messages with GC_PROTOCOL', () => {
    const bad = [
      '{',
      '{"op":"rm"}',
      '{"op":"du","filter":[1]}',
      '{"op":"prune","keepBytes":-1}',
      '{"op":"prune","keepDurationMs":1.5}',
    ];
    for (const b of bad)
      expect(() => decodeGcRequest(new TextEncoder().encode(b))).toThrow(GcProtocolError);
    expect(() => decodeGcReply(new TextEncoder().encode('{"records":[{"id":1}]}'))).toThrow(
      GcProtocolError,
    );
  });
});
