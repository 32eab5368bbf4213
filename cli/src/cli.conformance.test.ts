/**
 * `kiln debug dump-llb | kiln debug marshal-llb` round-trips every LLB conformance vector, through
 * the CLI's own entry point with real files.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { main } from './main.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const dir = process.env.KILN_CONFORMANCE_DIR ?? resolve(repoRoot, '../shared/conformance');
const vectors = JSON.parse(readFileSync(resolve(dir, 'llb/vectors.json'), 'utf8')) as {
  name: string;
  definition_base64: string;
}[];
const tmp = mkdtempSync(join(tmpdir(), 'kiln-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Runs the CLI in-process, capturing stdout (as bytes) and stderr. */
async function run(...args: string[]): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  const out: Buffer[] = [];
  const err: string[] = [];
  const w = vi
    .spyOn(process.stdout, 'write')
    .mockImplementation((chunk: string | Uint8Array, ...rest: unknown[]) => {
      out.push(Buffer.from(chunk));
      const cb = rest.find((r) => typeof r === 'function') as (() => void) | undefined;
      cb?.();
      return true;
    });
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    err.push(Buffer.from(chunk).toString());
    return true;
  });
  try {
    const code = await main(['node', 'kiln', ...args]);
    return { code, stdout: Buffer.concat(out), stderr: err.join('') };
  } finally {
    w.mockRestore();
    e.mockRestore();
  }
}

describe('kiln debug dump-llb | marshal-llb', () => {
  for (const v of vectors) {
    it(`round-trips ${v.name} byte for byte`, async () => {
      const defFile = join(tmp, `${v.name}.pb`);
      writeFileSync(defFile, Buffer.from(v.definition_base64, 'base64'));
      const dump = await run('debug', 'dump-llb', defFile);
      expect(dump.code).toBe(0);
      const jsonFile = join(tmp, `${v.name}.jsonl`);
      writeFileSync(jsonFile, dump.stdout);
      const back = await run('debug', 'marshal-llb', jsonFile);
      expect(back.code).toBe(0);
      expect(back.stdout.toString('base64')).toBe(v.definition_base64);
    });
  }
});

describe('kiln errors', () => {
  it('reports malformed input as one typed line, exit 1, no stack trace', async () => {
    const f = join(tmp, 'garbage.pb');
    writeFileSync(f, 'not a definition');
    const r = await run('debug', 'dump-llb', f);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: .*\[LLB_MALFORMED\]\n$/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('names the line of a bad dump-llb input', async () => {
    const f = join(tmp, 'bad.jsonl');
    writeFileSync(f, '{"op":{"Op":{"source":{"identifier":"x"}}}}\n{"op":{"nope":1}}\n');
    const r = await run('debug', 'marshal-llb', f);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('unknown field "nope"');
  });

  it('prints a Dockerfile error with the offending lines', async () => {
    const f = join(tmp, 'Dockerfile');
    writeFileSync(f, 'FROM busybox\nRUN <<EOF\necho\n');
    const r = await run('debug', 'dump-ast', f);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('>>> RUN <<EOF');
  });

  it('reports a missing file', async () => {
    const r = await run('debug', 'dump-llb', join(tmp, 'missing'));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('[INPUT_NOT_FOUND]');
  });
});
