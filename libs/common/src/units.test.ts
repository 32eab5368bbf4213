import { describe, expect, it } from 'vitest';
import { InvalidQuantityError, formatBytes, parseDuration, parseSize } from './units.js';

describe('units', () => {
  it('parses durations', () => {
    expect(parseDuration('1h30m')).toBe(5_400_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('2d')).toBe(172_800_000);
    expect(parseDuration('15')).toBe(15_000);
    for (const bad of ['', '1y', 'h', '-1s'])
      expect(() => parseDuration(bad)).toThrow(InvalidQuantityError);
  });

  it('parses sizes, a plain number being megabytes', () => {
    expect(parseSize('512')).toBe(512e6);
    expect(parseSize('2GB')).toBe(2e9);
    expect(parseSize('1GiB')).toBe(2 ** 30);
    expect(parseSize('10 kb')).toBe(10_000);
    expect(parseSize('0')).toBe(0);
    for (const bad of ['', 'MB', '1PB', '-1GB', '1.2.3'])
      expect(() => parseSize(bad)).toThrow(InvalidQuantityError);
  });

  it('formats bytes as buildctl does', () => {
    expect(formatBytes(0)).toBe('0.00B');
    expect(formatBytes(1_500_000)).toBe('1.50MB');
    expect(formatBytes(999)).toBe('999.00B');
  });
});
