import { describe, expect, it } from 'vitest';
import { BuildStatus } from './build-status.js';

async function take(it: AsyncIterable<{ seq: unknown }>): Promise<number[]> {
  const out: number[] = [];
  for await (const f of it) out.push(Number(f.seq));
  return out;
}

describe('BuildStatus', () => {
  it('numbers frames from 1 and replays them from any seq, then follows live frames', async () => {
    const s = new BuildStatus();
    s.push({ logs: [{ vertex: 'a' }] });
    s.push({ logs: [{ vertex: 'b' }] });
    const reader = take(s.since(1));
    s.push({ logs: [{ vertex: 'c' }] });
    s.close();
    s.push({ logs: [{ vertex: 'ignored' }] });
    expect(await reader).toEqual([2, 3]);
    expect(await take(s.since(0))).toEqual([1, 2, 3]);
    expect(await take(s.since(3))).toEqual([]);
    expect(s.seq).toBe(3);
  });

  it('starts at the oldest kept frame when older ones were evicted', async () => {
    const s = new BuildStatus(2);
    for (let i = 0; i < 5; i++) s.push({});
    s.close();
    expect(await take(s.since(0))).toEqual([4, 5]);
  });

  it('ends a waiting reader when its signal aborts', async () => {
    const s = new BuildStatus();
    s.push({});
    const ac = new AbortController();
    const seen: number[] = [];
    for await (const f of s.since(0, ac.signal)) {
      seen.push(Number(f.seq));
      ac.abort();
    }
    expect(seen).toEqual([1]);
  });
});
