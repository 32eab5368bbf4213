import { control, toLong } from '@kiln/protocol';
import { describe, expect, it } from 'vitest';
import type { ProgressEvent } from './progress-event.js';
import type { StatusResponse } from './kiln-client.js';
import { StatusEvents } from './status-events.js';

/** A frame as the wire gives it: decoded protobuf, int64s as Longs, bytes as Buffers. */
const frame = (f: Parameters<typeof control.StatusResponse.create>[0]): StatusResponse =>
  control.StatusResponse.decode(
    control.StatusResponse.encode(control.StatusResponse.create(f)).finish(),
  );

const ns = (ms: number) => toLong(BigInt(ms) * 1_000_000n);

function events(frames: StatusResponse[]): ProgressEvent[] {
  const out: ProgressEvent[] = [];
  const s = new StatusEvents((e) => out.push(e));
  for (const f of frames) s.push(f);
  return out;
}

describe('StatusEvents', () => {
  it('gives plain numbers and text for int64s and bytes; a vertex once however often repeated', () => {
    const started = { digest: 'sha256:a', name: 'RUN x', startedUnixNano: ns(1_000) };
    const done = { ...started, completedUnixNano: ns(1_250) };
    const euro = Buffer.from('€\n'); // 3 bytes + newline, split across two chunks below
    const out = events([
      frame({ seq: toLong(1n), vertexes: [started] }),
      frame({
        seq: toLong(2n),
        vertexes: [started],
        logs: [
          {
            vertex: 'sha256:a',
            stream: toLong(1n),
            msg: euro.subarray(0, 2),
            timestampUnixNano: ns(1_100),
          },
          {
            vertex: 'sha256:a',
            stream: toLong(2n),
            msg: Buffer.from('err'),
            timestampUnixNano: ns(1_100),
          },
          {
            vertex: 'sha256:a',
            stream: toLong(1n),
            msg: euro.subarray(2),
            timestampUnixNano: ns(1_200),
          },
        ],
        statuses: [
          {
            id: 'layer',
            vertex: 'sha256:a',
            name: 'pulling',
            current: toLong(5n),
            total: toLong(10n),
            timestampUnixNano: ns(1_150),
          },
        ],
      }),
      frame({ seq: toLong(3n), vertexes: [done] }),
      frame({ seq: toLong(4n), vertexes: [done] }), // a resumed stream repeats it
    ]);
    expect(out.filter((e) => e.type !== 'vertex.log')).toEqual([
      { type: 'vertex.started', digest: 'sha256:a', name: 'RUN x', time: 1_000 },
      {
        type: 'vertex.status',
        digest: 'sha256:a',
        id: 'layer',
        name: 'pulling',
        current: 5,
        total: 10,
        time: 1_150,
        completed: false,
      },
      { type: 'vertex.completed', digest: 'sha256:a', name: 'RUN x', time: 1_250, durationMs: 250 },
    ]);
    const logs = out.filter((e) => e.type === 'vertex.log');
    expect(logs.map((l) => [l.stream, l.text, l.time])).toEqual([
      [1, '', 1_100],
      [2, 'err', 1_100],
      [1, '€\n', 1_200],
    ]);
    expect(Buffer.from(logs[0]!.data)).toEqual(euro.subarray(0, 2));
  });

  it('a cached vertex is CACHED; an error names its vertex; a canceled one is no error', () => {
    const out = events([
      frame({
        vertexes: [
          {
            digest: 'c',
            name: 'FROM x',
            cached: true,
            startedUnixNano: ns(5),
            completedUnixNano: ns(5),
          },
          {
            digest: 'e',
            name: 'RUN false',
            startedUnixNano: ns(5),
            completedUnixNano: ns(9),
            error: 'exit code 1',
          },
          {
            digest: 'k',
            name: 'RUN other',
            startedUnixNano: ns(5),
            completedUnixNano: ns(9),
            error: 'canceled',
          },
        ],
      }),
    ]);
    expect(out.map((e) => `${e.type} ${e.digest}`)).toEqual([
      'vertex.cached c',
      'vertex.started e',
      'vertex.error e',
    ]);
    expect(out[2]).toMatchObject({ error: 'exit code 1', time: 9 });
  });
});
