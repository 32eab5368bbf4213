import type { WorkerInfo } from '@kiln/bus';
import { parsePlatform } from '@kiln/protocol';
import { describe, expect, it } from 'vitest';
import { planPlacement } from './placement.js';

function w(id: string, platforms: string[], o: Partial<WorkerInfo> = {}): WorkerInfo {
  return {
    v: 1,
    id,
    platforms: platforms.map((p) => {
      const [plat = '', mode] = p.split('=');
      return { ...parsePlatform(plat), emulated: mode === 'emulated' };
    }),
    labels: {},
    slots: 1,
    freeSlots: 1,
    freeDiskBytes: 0,
    held: [],
    draining: false,
    boot: 'b',
    startedAt: 0,
    heartbeatAt: 0,
    seq: 1,
    ...o,
  };
}

const arm64 = { os: 'linux', architecture: 'arm64' };

describe('planPlacement', () => {
  it('never offers to a worker without the platform, and prefers native to emulated', () => {
    const live = [
      w('amd', ['linux/amd64']),
      w('emu', ['linux/arm64=emulated']),
      w('arm', ['linux/arm64']),
    ];
    expect(planPlacement({}, arm64, ['amd', 'emu', 'arm'], live)).toEqual({
      offerTo: 'arm',
      queue: 'native',
      capable: true,
    });
    expect(planPlacement({}, arm64, ['amd'], live)).toEqual({ queue: 'native', capable: true });
    const noNative = live.filter((x) => x.id !== 'arm');
    expect(planPlacement({}, arm64, ['emu'], noNative)).toEqual({
      offerTo: 'emu',
      queue: 'emulated',
      capable: true,
    });
    expect(planPlacement({}, arm64, [], [w('amd', ['linux/amd64'])])).toEqual({
      queue: 'native',
      capable: false,
    });
  });

  it('offers to the worker holding most inputs, skipping draining ones', () => {
    const live = [
      w('a', ['linux/arm64'], { held: ['r1'] }),
      w('b', ['linux/arm64'], { held: ['r1', 'r2'] }),
      w('c', ['linux/arm64'], { held: ['r1', 'r2', 'r3'], draining: true }),
    ];
    const task = { inputs: [{ resultId: 'r1' }, { resultId: 'r2' }, { resultId: 'r3' }] };
    expect(planPlacement(task, arm64, [], live).offerTo).toBe('b');
    expect(
      planPlacement({ inputs: [{ resultId: 'zz', holderWorker: 'a' }] }, arm64, [], live).offerTo,
    ).toBe('a');
    expect(
      planPlacement({ inputs: [{ resultId: 'zz' }] }, arm64, [], live).offerTo,
    ).toBeUndefined();
  });
});
