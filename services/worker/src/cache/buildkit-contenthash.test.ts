import { createHash } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildkitChecksum, buildkitChecksumSupported } from './buildkit-contenthash.js';

// Vectors: the content-link record digests (`rootKey(checksum, -1)`) of caches exported by
// buildkitd v0.11.6 for `COPY a.txt`, `COPY d /d`, `COPY . /app`, `COPY *.txt /dst/` and
// `COPY s* /dst/` of these trees (owned by 0:0, files 0644, directories 0755).
const rootKey = (d: string) => `sha256:${createHash('sha256').update(`${d}@-1`).digest('hex')}`;
const dirs: string[] = [];
function tree(files: Record<string, string>, links: Record<string, string> = {}): string {
  const root = mkdtempSync(join(tmpdir(), 'kiln-bk-contenthash-'));
  dirs.push(root);
  chmodSync(root, 0o755);
  for (const [p, content] of Object.entries(files)) {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = join(root, ...parts.slice(0, i));
      mkdirSync(d, { recursive: true });
      chmodSync(d, 0o755);
      chownSync(d, 0, 0);
    }
    writeFileSync(join(root, p), content);
    chmodSync(join(root, p), 0o644);
    chownSync(join(root, p), 0, 0);
  }
  for (const [p, target] of Object.entries(links)) symlinkSync(target, join(root, p));
  return root;
}
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe("BuildKit's contenthash", () => {
  it('of a file', async () => {
    const root = tree({ 'a.txt': 'hello\n' });
    expect(rootKey(await buildkitChecksum(root, ['/a.txt'], true))).toBe(
      'sha256:c24a47b576469b52903dd7e5045a62fee5855b447dee1771d67b829458d2c08e',
    );
  });

  it('of a directory', async () => {
    const root = tree({ 'd/x.txt': 'x\n', 'd/sub/y.txt': 'yy\n' });
    expect(rootKey(await buildkitChecksum(root, ['d'], true))).toBe(
      'sha256:bc9399855789a0aa669d75a8ba7f18223b07ad6ded6e7735bdc6d545dde41b54',
    );
  });

  it('of the whole tree, with a symlink', async () => {
    const root = tree(
      { 'x.txt': 'x\n', 'sub/y.txt': 'yy\n', Dockerfile: 'FROM scratch\nCOPY . /app\n' },
      { link: 'x.txt' },
    );
    expect(rootKey(await buildkitChecksum(root, ['/'], true))).toBe(
      'sha256:739ebc127655999c1bc0c5741a821300a2e6b313c3383607375dcf0bb07ec689',
    );
  });

  it('changes with content and mode, and says which selectors it reproduces', async () => {
    const a = tree({ 'a.txt': 'hello\n' });
    const b = tree({ 'a.txt': 'hellO\n' });
    const base = await buildkitChecksum(a, ['/a.txt'], true);
    expect(await buildkitChecksum(b, ['/a.txt'], true)).not.toBe(base);
    chmodSync(join(a, 'a.txt'), 0o755);
    expect(await buildkitChecksum(a, ['/a.txt'], true)).not.toBe(base);
    const spec = { includePatterns: [], excludePatterns: [] };
    expect(buildkitChecksumSupported(spec)).toBe(true);
    expect(buildkitChecksumSupported({ ...spec, excludePatterns: ['x'] })).toBe(false);
  });

  it('of wildcards: files matched, and a matched directory flattened (vectors)', async () => {
    // buildkitd v0.11.6's exports of `FROM scratch` + `COPY *.txt /dst/` and `COPY s* /dst/`.
    const root = tree({
      'a.txt': 'hello\n',
      'b.txt': 'bee\n',
      'c.md': 'c\n',
      'sub/d.txt': 'd\n',
      'sub/deep/e.txt': 'e\n',
    });
    expect(rootKey(await buildkitChecksum(root, ['/*.txt'], true, true))).toBe(
      'sha256:804cf14495613e860af9de4662db12c2d41937e1ef807bdce3576d6c57cd5a2f',
    );
    expect(rootKey(await buildkitChecksum(root, ['/s*'], true, true))).toBe(
      'sha256:55fe6eec9ee1a0b0ed8883b1a09848859709f270e39b43e120fb147ba7430052',
    );
  });

  // Also end to end against buildkitd (test/src/e2e/cache-buildkit-interop.test.ts, both ways).
  it('of a wildcard: what matches counts, what does not match does not', async () => {
    const root = tree({ 'a.txt': 'hello\n', 'b.txt': 'bee\n', 'c.md': 'c\n', 'sub/d.txt': 'd\n' });
    const bk = (sel: string) => buildkitChecksum(root, [sel], true, true);
    // A pattern-free selector of a wildcard copy is the plain path's digest, as in BuildKit.
    expect(await bk('/a.txt')).toBe(await buildkitChecksum(root, ['/a.txt'], true));
    const star = await bk('/*.txt');
    expect(star).not.toBe(await bk('/a.txt'));
    // c.md and sub/d.txt do not match `/*.txt` (`*` stops at `/`): changing them changes nothing.
    writeFileSync(join(root, 'c.md'), 'changed\n');
    writeFileSync(join(root, 'sub', 'd.txt'), 'changed\n');
    expect(await bk('/*.txt')).toBe(star);
    // Everything under a matched directory counts.
    const sub = await bk('/s*');
    writeFileSync(join(root, 'sub', 'd.txt'), 'changed again\n');
    expect(await bk('/s*')).not.toBe(sub);
    // b.txt matches: changing it changes the digest.
    writeFileSync(join(root, 'b.txt'), 'BEE\n');
    expect(await bk('/*.txt')).not.toBe(star);
    // Without `wildcard` (a copy that does not allow them) the pattern is a missing path.
    await expect(buildkitChecksum(root, ['/*.txt'], true)).rejects.toThrow(/not found/);
  });
});
