import { describe, expect, it } from 'vitest';
import { Long, longToJs, toLong } from './long.js';

describe('toLong', () => {
  it('converts bigints exactly, as the decimal parse did (negative, beyond 2^53, the int64 edges)', () => {
    for (const v of [
      0n,
      1n,
      -1n,
      1796247071176123456n,
      -1796247071176123456n,
      (1n << 53n) + 1n,
      (1n << 63n) - 1n,
      -(1n << 63n),
      0xffffffffn,
      1n << 32n,
    ]) {
      const l = toLong(v);
      expect(l.toString()).toBe(v.toString());
      expect(l.equals(Long.fromString(v.toString(), false))).toBe(true);
    }
  });

  it('keeps numbers, strings and Longs, and refuses non-integers', () => {
    expect(toLong(42).toNumber()).toBe(42);
    expect(toLong('-7').toNumber()).toBe(-7);
    const l = Long.fromNumber(5);
    expect(toLong(l)).toBe(l);
    expect(() => toLong(1.5)).toThrow(RangeError);
    expect(longToJs(toLong(1796247071176123456n))).toBe(1796247071176123456n);
  });
});
