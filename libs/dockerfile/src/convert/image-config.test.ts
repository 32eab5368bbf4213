import { describe, expect, it } from 'vitest';
import { formatGoDuration, parseGoDuration } from '../go/duration.js';
import { addEnv, goTime, healthcheckHistory } from './image-config.js';

describe('addEnv (convert_test.go TestAddEnv)', () => {
  it('replaces the first entry of a key, appends a new key, completes a bare key', () => {
    expect(addEnv(['key1=val1', 'key2=val2'], 'key1', 'value1')).toEqual([
      'key1=value1',
      'key2=val2',
    ]);
    expect(addEnv(['key1=val1', 'key2=val2'], 'key3', 'val3')).toEqual([
      'key1=val1',
      'key2=val2',
      'key3=val3',
    ]);
    expect(addEnv(['key1=val1', 'key1=val2'], 'key1', 'value1')).toEqual([
      'key1=value1',
      'key1=val2',
    ]);
    expect(addEnv(['key1=val1', 'key2=val2', 'key3'], 'key3', 'val3')).toEqual([
      'key1=val1',
      'key2=val2',
      'key3=val3',
    ]);
  });
});

describe('Go formatting', () => {
  it('durations as time.Duration prints and parses them', () => {
    expect([0, 1, 1500, 1e6, 1.5e9, 60e9, 90e9, 3600e9, 3723e9].map(formatGoDuration)).toEqual([
      '0s',
      '1ns',
      '1.5µs',
      '1ms',
      '1.5s',
      '1m0s',
      '1m30s',
      '1h0m0s',
      '1h2m3s',
    ]);
    expect(['1h2m3.5s', '300ms', '1.5us', '2µs', '0', '-1s'].map(parseGoDuration)).toEqual([
      3723.5e9, 300e6, 1500, 2000, 0, -1e9,
    ]);
    expect(() => parseGoDuration('10')).toThrow('time: missing unit in duration "10"');
    expect(() => parseGoDuration('1d')).toThrow('time: unknown unit "d" in duration "1d"');
    expect(() => parseGoDuration('')).toThrow('time: invalid duration ""');
  });

  it('times as encoding/json writes a UTC time.Time', () => {
    expect(goTime(new Date(1700000000000))).toBe('2023-11-14T22:13:20Z');
    expect(goTime(new Date(1700000000120))).toBe('2023-11-14T22:13:20.12Z');
    expect(goTime(undefined)).toBeUndefined();
  });

  it('a healthcheck as %+v', () => {
    expect(healthcheckHistory({ Test: ['CMD', 'a b'], Interval: 5e9, Retries: 1 })).toBe(
      '{Test:[CMD a b] Interval:5s Timeout:0s StartPeriod:0s StartInterval:0s Retries:1}',
    );
  });
});
