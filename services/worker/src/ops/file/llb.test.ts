import { lstat, mkdtemp, readFile, readdir, readlink, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { marshal, mkdir, parseDefinition, scratch } from '@kiln/llb';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { executeFileOp } from './execute.js';
import { copyingMutable } from './mutable.js';

let base: string;

beforeEach(async () => {
  base = await realpath(await mkdtemp(join(tmpdir(), 'kiln-fileop-llb-')));
});

afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

/** Solves a Definition made only of file ops, in order, feeding each op its inputs' outputs. */
async function solve(bytes: Uint8Array): Promise<string> {
  const def = parseDefinition(bytes);
  const outputs = new Map<string, string[]>();
  const m = copyingMutable(base);
  for (const digest of def.order) {
    const op = def.ops.get(digest)!.op;
    expect(op.file).toBeTruthy();
    const inputs = op.inputs.map((i) => outputs.get(i.digest ?? '')![Number(i.index)]!);
    outputs.set(digest, (await executeFileOp(op.file!, inputs, m)).outputs);
  }
  return outputs.get(def.result.digest)![def.result.index]!;
}

describe('FileOp from the LLB builder', () => {
  it('runs a marshaled, decoded graph with chained actions and a copy from another state', async () => {
    const t = new Date('2022-03-04T05:06:07Z');
    const ctx = scratch().file(
      mkdir('/src', 0o755)
        .mkfile('/src/a.txt', 0o600, 'A', { createdTime: t })
        .mkfile('/src/b.log', 0o644, 'B')
        .symlink('a.txt', '/src/link'),
    );
    const st = scratch()
      .file(mkdir('/etc', 0o755).mkfile('/etc/passwd', 0o644, 'app:x:1000:1000::/:/bin/sh\n'))
      .file(
        mkdir('/app', 0o755, { chown: 'app' })
          .copy(ctx, '/src/*.txt', '/app/', { allowWildcard: true, chown: 'app' })
          .copy(ctx, '/src/link', '/app/link')
          .copy(ctx, '/src', '/all', {
            copyDirContentsOnly: true,
            createDestPath: true,
            excludePatterns: ['*.log'],
          })
          .rm('/etc/passwd'),
      );
    const out = await solve(marshal(st).toBytes());
    expect((await readdir(out)).sort()).toEqual(['all', 'app', 'etc']);
    expect(await readdir(join(out, 'etc'))).toEqual([]);
    const a = await lstat(join(out, 'app/a.txt'));
    expect([a.mode & 0o777, a.uid, a.gid, a.mtime.getTime()]).toEqual([
      0o600,
      1000,
      1000,
      t.getTime(),
    ]);
    expect(await readFile(join(out, 'app/a.txt'), 'utf8')).toBe('A');
    expect((await lstat(join(out, 'app'))).uid).toBe(1000);
    expect(await readlink(join(out, 'app/link'))).toBe('a.txt');
    expect((await readdir(join(out, 'all'))).sort()).toEqual(['a.txt', 'link']);
  });
});
