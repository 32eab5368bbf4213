import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileDigestCache } from './hash-cache.js';

const D1 = `sha256:${'1'.repeat(64)}`;
const D2 = `sha256:${'2'.repeat(64)}`;
const stamp = (n: number) => ({ size: 10n, mtimeNs: BigInt(n), ctimeNs: 5n, ino: 7n });

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-hash-cache-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('FileDigestCache', () => {
  it('persists digests between instances, valid only while the stamp is unchanged', async () => {
    const file = join(dir, 'sub', 'digests');
    const a = new FileDigestCache(file);
    await a.load();
    a.set('/ctx/a.txt', stamp(1), D1);
    a.set('/ctx/b.txt', stamp(1), D2);
    await a.save();
    const b = new FileDigestCache(file);
    await b.load();
    expect(b.get('/ctx/a.txt', stamp(1))).toBe(D1);
    expect(b.get('/ctx/b.txt', stamp(2))).toBeUndefined(); // mtime changed
    expect(b.get('/ctx/b.txt', { ...stamp(1), ino: 8n })).toBeUndefined(); // replaced file
    expect(b.get('/ctx/b.txt', { ...stamp(1), ctimeNs: 6n })).toBeUndefined(); // touched
    expect(b.get('/ctx/c.txt', stamp(1))).toBeUndefined();
  });

  it('ignores a corrupt line or a foreign file, and replaces them on the next save', async () => {
    const file = join(dir, 'digests');
    writeFileSync(
      file,
      `kiln-context-digests v1\n/ctx/a.txt\t10\t1\t5\t7\t${D1}\n/ctx/b.txt\t10\tnot-a-number\n` +
        `/ctx/c.txt\t10\t1\t5\t7\tsha256:short\n/ctx/d.txt\t10\t1\t5\t7\t${D2}\textra\n`,
    );
    const a = new FileDigestCache(file);
    await a.load();
    expect(a.get('/ctx/a.txt', stamp(1))).toBe(D1);
    expect(a.get('/ctx/b.txt', stamp(1))).toBeUndefined();
    expect(a.get('/ctx/c.txt', stamp(1))).toBeUndefined();
    expect(a.get('/ctx/d.txt', stamp(1))).toBeUndefined();
    a.set('/ctx/b.txt', stamp(1), D2);
    await a.save();
    // Only well-formed lines are written back.
    expect(readFileSync(file, 'utf8')).toBe(
      `kiln-context-digests v1\n/ctx/a.txt\t10\t1\t5\t7\t${D1}\n/ctx/b.txt\t10\t1\t5\t7\t${D2}\n`,
    );
    const b = new FileDigestCache(file);
    await b.load();
    expect(b.get('/ctx/b.txt', stamp(1))).toBe(D2);

    writeFileSync(file, 'something else entirely\n');
    const c = new FileDigestCache(file);
    await c.load();
    expect(c.get('/ctx/b.txt', stamp(1))).toBeUndefined();
  });

  it('keeps at most maxEntries, those used by this process first', async () => {
    const file = join(dir, 'digests');
    const a = new FileDigestCache(file, 3);
    await a.load();
    for (let i = 0; i < 3; i++) a.set(`/old/${i}`, stamp(1), D1);
    await a.save();
    const b = new FileDigestCache(file, 3);
    await b.load();
    expect(b.get('/old/2', stamp(1))).toBe(D1);
    b.set('/new/0', stamp(1), D2);
    b.set('/new/1', stamp(1), D2);
    await b.save();
    const lines = readFileSync(file, 'utf8').trim().split('\n').slice(1);
    expect(lines).toHaveLength(3);
    const paths = lines.map((l) => l.split('\t')[0]);
    expect(paths).toEqual(expect.arrayContaining(['/old/2', '/new/0', '/new/1']));
  });
});
