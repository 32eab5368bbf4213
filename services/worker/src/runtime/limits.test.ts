import { describe, expect, it } from 'vitest';
import { capLimits } from './cgroups.js';

describe('capLimits', () => {
  it("takes the smaller where both set one, else the one set: the worker's is a maximum", () => {
    const worker = { memoryBytes: 100, pids: 4096, timeMs: 0 };
    expect(
      capLimits(worker, { memoryBytes: 50, pids: 10_000, cpuShares: 512, timeMs: 60_000 }),
    ).toEqual({
      memoryBytes: 50,
      pids: 4096,
      cpuShares: 512,
      timeMs: 60_000,
    });
    // A tenant's 0 is none of its own: the worker's stays.
    expect(capLimits(worker, { memoryBytes: 0, pids: 0 })).toEqual({
      memoryBytes: 100,
      pids: 4096,
    });
    expect(capLimits({}, {})).toEqual({});
  });
});
