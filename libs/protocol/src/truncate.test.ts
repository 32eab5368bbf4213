import { describe, expect, it } from 'vitest';
import { boundLogFields, truncateMiddle } from './truncate.js';

describe('truncateMiddle', () => {
  it('keeps short text and cuts long text to the bound, head and tail around a marker', () => {
    expect(truncateMiddle('short', 10)).toBe('short');
    const s = 'a'.repeat(500) + 'b'.repeat(500);
    const t = truncateMiddle(s, 200);
    expect(t.length).toBeLessThanOrEqual(200);
    expect(t).toMatch(/^a+…\[\d+ characters truncated\]…b+$/);
    const cut = Number(/\[(\d+) characters/.exec(t)![1]);
    expect(t.length - `…[${cut} characters truncated]…`.length + cut).toBe(1000);
  });
});

describe('boundLogFields', () => {
  it('cuts long strings and error messages; leaves a small record as it is', () => {
    const small = { name: 'x', n: 1 };
    expect(boundLogFields(small)).toBe(small);
    const err = new Error('m'.repeat(20_000));
    const out = boundLogFields({ name: 'n'.repeat(1_000_000), err, n: 2 }, 8192);
    expect((out.name as string).length).toBeLessThanOrEqual(8192);
    expect((out.err as Error).message.length).toBeLessThanOrEqual(8192);
    expect(out.err).toBeInstanceOf(Error);
    expect(out.n).toBe(2);
    expect(err.message).toHaveLength(20_000); // the caller's error is untouched
  });
});
