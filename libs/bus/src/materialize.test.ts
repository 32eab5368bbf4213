import { describe, expect, it } from 'vitest';
import { jsonBytes, thrownCode } from '@kiln/testing';
import { decodeResult, encodeResult, fromBase64, toBase64 } from './codec.js';
import {
  blobsUploadedRule,
  decodeMaterializeReply,
  decodeMaterializeRequest,
  encodeMaterializeJson,
  materializeSubject,
  resultHasBlobs,
  resultLostRule,
} from './materialize.js';
import type { MaterializedLayer } from './materialize.js';
import type { TaskRecord } from './task-record.js';

const d = (c: string): string => `sha256:${c.repeat(64)}`;

/** A done record held by `w1` whose result has a base layer with a blob and one without. */
function done(): TaskRecord {
  const result = encodeResult({
    taskId: 't1',
    workerId: 'w1',
    outputs: [
      {
        resultId: d('c'),
        layers: [
          { digest: d('1'), diffId: d('a'), size: 10, mediaType: 'gz' },
          { digest: '', diffId: d('b') },
        ],
      },
    ],
  });
  return {
    v: 1,
    taskId: 't1',
    cacheKey: d('f'),
    platform: 'linux/amd64',
    attempt: 1,
    attemptToken: 'tok',
    state: 'done',
    builds: [],
    holder: 'w1',
    task: '',
    result: toBase64(result),
    createdAt: 0,
    dispatchedAt: 0,
  };
}

describe('materialize requests', () => {
  it('names one subject per worker and refuses ids that are not subject tokens', () => {
    expect(materializeSubject('w-1')).toBe('kiln.materialize.w-1');
    expect(thrownCode(() => materializeSubject('a.b'))).toBe('BUS_INVALID_NAME');
  });

  it('round-trips requests and replies', () => {
    expect(decodeMaterializeRequest(encodeMaterializeJson({ resultId: d('c') }))).toEqual({
      resultId: d('c'),
    });
    const layers: MaterializedLayer[] = [
      { digest: d('1'), diffId: d('a'), size: 3, mediaType: 'gz' },
    ];
    expect(decodeMaterializeReply(encodeMaterializeJson({ layers }))).toEqual({ layers });
    const error = { code: 'MATERIALIZE_RESULT_UNKNOWN', message: 'not held' };
    expect(decodeMaterializeReply(encodeMaterializeJson({ error }))).toEqual({ error });
  });

  it('refuses malformed requests and replies, and layers without a blob', () => {
    expect(thrownCode(() => decodeMaterializeRequest(jsonBytes({})))).toBe('MATERIALIZE_PROTOCOL');
    expect(thrownCode(() => decodeMaterializeRequest(new Uint8Array([0x7b])))).toBe(
      'MATERIALIZE_PROTOCOL',
    );
    expect(thrownCode(() => decodeMaterializeReply(jsonBytes({ layers: 'x' })))).toBe(
      'MATERIALIZE_PROTOCOL',
    );
    expect(
      thrownCode(() =>
        decodeMaterializeReply(jsonBytes({ layers: [{ digest: '', diffId: d('a'), size: 0 }] })),
      ),
    ).toBe('MATERIALIZE_PROTOCOL');
  });
});

describe('lazy result rules', () => {
  it('resultHasBlobs: every layer of every output has a digest', () => {
    expect(resultHasBlobs([{ layers: [{ digest: d('1') }] }, { layers: [] }])).toBe(true);
    expect(resultHasBlobs([{ layers: [{ digest: d('1') }, { digest: '' }] }])).toBe(false);
  });

  it('resultLostRule fails a done record of that holder whose result lacks blobs', () => {
    const lost = resultLostRule(done(), 'w1', 5);
    expect(lost).toMatchObject({
      state: 'failed',
      finishedAt: 5,
      error: { code: 'TASK_RESULT_LOST', retryable: true },
    });
    // Another holder (rerun elsewhere), a record not done, or one whose blobs exist: unchanged.
    expect(resultLostRule(done(), 'w2')).toBeUndefined();
    expect(resultLostRule({ ...done(), state: 'running' }, 'w1')).toBeUndefined();
    const up = blobsUploadedRule(
      done(),
      'w1',
      new Map([[d('b'), { digest: d('2'), diffId: d('b'), size: 7, mediaType: 'gz' }]]),
    );
    expect(up && resultLostRule(up, 'w1')).toBeUndefined();
  });

  it('blobsUploadedRule adds the digests of uploaded layers, only for the holder of a done record', () => {
    const uploaded = new Map([
      [d('b'), { digest: d('2'), diffId: d('b'), size: 7, mediaType: 'gz' }],
    ]);
    const up = blobsUploadedRule(done(), 'w1', uploaded);
    const layers = decodeResult(fromBase64(up?.result ?? '')).outputs[0]?.layers ?? [];
    expect(layers.map((l) => [l.digest, l.diffId, Number(l.size), l.mediaType])).toEqual([
      [d('1'), d('a'), 10, 'gz'],
      [d('2'), d('b'), 7, 'gz'],
    ]);
    expect(blobsUploadedRule(done(), 'w2', uploaded)).toBeUndefined();
    expect(blobsUploadedRule({ ...done(), state: 'running' }, 'w1', uploaded)).toBeUndefined();
    // Nothing new: no write.
    expect(blobsUploadedRule(up!, 'w1', uploaded)).toBeUndefined();
  });
});
