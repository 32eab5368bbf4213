/** Solver events as control API status frames. */
import type { TaskProgress } from '@kiln/bus';
import { toLong } from '@kiln/protocol';
import type { StatusFrame } from './build-status.js';
import type { VertexSnapshot } from '../solver/solve.js';

const nanos = (ms: number | undefined): bigint => (ms ? BigInt(ms) * 1_000_000n : 0n);

export function vertexFrame(v: VertexSnapshot): StatusFrame {
  return {
    vertexes: [
      {
        digest: v.digest,
        inputs: v.inputs,
        name: v.name,
        cached: v.cached,
        startedUnixNano: toLong(nanos(v.startedAt)),
        completedUnixNano: toLong(nanos(v.completedAt)),
        error: v.error ?? '',
        workerId: v.workerId ?? '',
      },
    ],
  };
}

/** A worker's progress report: its log lines, and its counter if it has one. */
export function progressFrame(digest: string, p: TaskProgress): StatusFrame | undefined {
  const at = toLong(nanos(p.at));
  const logs = (p.lines ?? []).map((l) => ({
    vertex: digest,
    timestampUnixNano: at,
    stream: 1,
    msg: Buffer.from(l.endsWith('\n') ? l : `${l}\n`),
  }));
  const statuses =
    p.current !== undefined || p.total !== undefined
      ? [
          {
            id: p.stage ?? 'progress',
            vertex: digest,
            name: p.stage ?? '',
            current: p.current ?? 0,
            total: p.total ?? 0,
            timestampUnixNano: at,
          },
        ]
      : [];
  if (logs.length === 0 && statuses.length === 0) return undefined;
  return { logs, statuses };
}
