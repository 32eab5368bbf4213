import type { WorkerInfo } from '@kiln/bus';
import { encodeWorkerInfo } from '@kiln/bus';
import type { KvWatchEntry } from '@nats-io/kv';
import { describe, expect, it } from 'vitest';
import { WorkerTable } from './worker-table.js';

function put(id: string, seq: number, boot = 'b1'): KvWatchEntry {
  const info: WorkerInfo = {
    v: 1,
    id,
    platforms: [{ os: 'linux', architecture: 'amd64', emulated: false }],
    labels: {},
    slots: 1,
    freeSlots: 1,
    freeDiskBytes: 0,
    held: [],
    draining: false,
    boot,
    startedAt: 0,
    heartbeatAt: 0,
    seq,
  };
  const value = encodeWorkerInfo(info);
  return { key: id, value, operation: 'PUT', length: value.length, revision: seq } as KvWatchEntry;
}

describe('WorkerTable', () => {
  it('judges liveness on the local clock, ignores replayed heartbeats, expires the long gone', () => {
    const t = new WorkerTable(1_000);
    t.apply(put('w1', 5), 0);
    expect(t.isAlive('w1', 900)).toBe(true);
    expect(t.isAlive('w1', 1_100)).toBe(false);
    t.apply(put('w1', 5), 1_100); // the same heartbeat seen again (a reopened watch)
    expect(t.isAlive('w1', 1_200)).toBe(false);
    t.apply(put('w1', 6), 1_200);
    expect(t.isAlive('w1', 1_300)).toBe(true);
    expect(t.isAlive('w1', 1_300, 'b1')).toBe(true);
    t.apply(put('w1', 1, 'b2'), 1_300); // restarted worker: its seq starts again
    expect(t.get('w1')?.boot).toBe('b2');
    // What the previous incarnation held is lost at once, not after a heartbeat timeout.
    expect(t.isAlive('w1', 1_300, 'b1')).toBe(false);
    expect(t.isAlive('w1', 1_300, 'b2')).toBe(true);
    t.refreshAll(5_000); // reconnected: everybody's clock restarts
    expect(t.isAlive('w1', 5_500)).toBe(true);
    expect(t.expire(10_000, 20_000)).toEqual(['w1']);
    expect(t.alive(20_000)).toEqual([]);
    t.apply(put('w2', 1), 0);
    t.apply({ ...put('w2', 2), operation: 'DEL', length: 0 }, 1);
    expect(t.get('w2')).toBeUndefined();
  });
});
