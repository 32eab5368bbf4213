import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { compareNames } from './changes.js';
import { readSmallSync } from './sync-fs.js';

const dir = mkdtempSync(join(tmpdir(), 'kiln-sync-fs-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('compareNames', () => {
  it('orders names as their UTF-8 bytes (Go), not as UTF-16 code units', () => {
    const names = [
      'b',
      'a',
      'ab',
      'B',
      '',
      'é',
      '\u{1f600}', // f0 9f 98 80: a surrogate pair in UTF-16
      '\uff5e', // ef bd 9e: above the surrogates in UTF-16, below U+1F600 in UTF-8
      '\ue000',
      '\u{10000}',
      'a\u{1f600}',
      'a\uffff',
    ];
    const bytewise = [...names].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    expect([...names].sort(compareNames)).toEqual(bytewise);
    expect(bytewise.indexOf('\uff5e')).toBeLessThan(bytewise.indexOf('\u{1f600}'));
    for (const x of names)
      for (const y of names)
        expect(Math.sign(compareNames(x, y)), `${x} ${y}`).toBe(
          Buffer.compare(Buffer.from(x), Buffer.from(y)),
        );
  });
});

describe('readSmallSync', () => {
  it('reads a file of the size given, and refuses one of another size', () => {
    const p = join(dir, 'f');
    writeFileSync(p, 'hello');
    expect(readSmallSync(p, 5)?.toString()).toBe('hello');
    expect(readSmallSync(p, 4)).toBeUndefined(); // grew since its lstat
    expect(readSmallSync(p, 6)).toBeUndefined(); // shrank
    writeFileSync(p, '');
    expect(readSmallSync(p, 0)?.length).toBe(0);
    expect(() => readSmallSync(join(dir, 'missing'), 1)).toThrow(/ENOENT/);
  });
});
