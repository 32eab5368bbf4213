/**
 * Exporters checked by independent tools: tar(1) reads the tar export, skopeo and umoci read the
 * OCI tarball (both are Debian packages installed by scripts/setup.sh).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, readdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { LinuxAmd64, image, marshal, mkfile } from '@kiln/llb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FsBlobStore } from '@kiln/store';
import type { Engine } from '../engine/engine.js';
import { TaskRunner } from '../node/task-runner.js';
import { runGraph } from '../test-support/graphs.js';

const run = promisify(execFile);
const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
let engine: Engine;
let state: string;
let out: string;
let snapshot: string | undefined;

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  state = await mkdtemp(join(tmpdir(), 'kiln-export-'));
  out = await mkdtemp(join(tmpdir(), 'kiln-export-out-'));
  const runner = await TaskRunner.open({
    stateDir: state,
    store: new FsBlobStore({ root: join(state, 'store') }),
  });
  engine = runner.engine;
  const st = image(fixture)
    .run({ shlex: 'sh -c "mkdir -p /app && echo hello > /app/hello && rm /bin/ls"' })
    .root()
    .file(mkfile('/app/conf', 0o600, 'x=1\n', { chown: '1000:1000' }));
  // The result as the worker's task runner commits it, then exported by the runner's engine.
  snapshot = await runGraph(runner, marshal(st, { platform: LinuxAmd64 }).toBytes());
}, 120_000);
afterAll(async () => {
  if (process.env.KILN_KEEP_TEST_DIRS) return;
  await rm(out, { recursive: true, force: true });
  await rm(state, { recursive: true, force: true });
});

describe('exporters', () => {
  it('local: copies the result with modes and owners', async () => {
    const dest = join(out, 'local');
    await engine.export(snapshot, { type: 'local', dest });
    expect(await readFile(join(dest, 'app/hello'), 'utf8')).toBe('hello\n');
    const st = await stat(join(dest, 'app/conf'));
    expect(st.mode & 0o777).toBe(0o600);
    expect(st.uid).toBe(1000);
    await expect(stat(join(dest, 'bin/ls'))).rejects.toThrow();
    expect(await readdir(join(dest, 'bin'))).toContain('busybox');
  });

  it('tar: a tar stream that tar(1) lists, same bytes every time', async () => {
    const a = join(out, 'a.tar');
    const b = join(out, 'b.tar');
    await engine.export(snapshot, { type: 'tar', dest: a });
    await engine.export(snapshot, { type: 'tar', dest: b });
    const { stdout } = await run('tar', ['-tvf', a]);
    expect(stdout).toMatch(/app\/hello/);
    expect(stdout).not.toMatch(/bin\/ls$/m);
    expect(await readFile(a)).toEqual(await readFile(b));
  });

  it('oci: an image tarball that skopeo inspects and umoci unpacks', async () => {
    const dest = join(out, 'img.tar');
    const config = {
      architecture: 'amd64',
      os: 'linux',
      config: { Env: ['PATH=/bin'], Cmd: ['cat', '/app/hello'] },
    };
    await engine.exportImages(
      [{ snapshot, config, platform: { os: 'linux', architecture: 'amd64' } }],
      { type: 'oci', dest, names: ['kiln/test:1'] },
    );
    const { stdout } = await run('skopeo', ['inspect', '--raw', `oci-archive:${dest}:1`]);
    const manifest = JSON.parse(stdout) as { layers: { digest: string }[] };
    expect(manifest.layers.length).toBeGreaterThanOrEqual(3); // busybox + exec + file
    const cfg = JSON.parse(
      (await run('skopeo', ['inspect', '--config', `oci-archive:${dest}:1`])).stdout,
    ) as {
      config: { Cmd: string[] };
      rootfs: { diff_ids: string[] };
    };
    expect(cfg.config.Cmd).toEqual(['cat', '/app/hello']);
    expect(cfg.rootfs.diff_ids).toHaveLength(manifest.layers.length);

    const layout = join(out, 'layout');
    await run('mkdir', ['-p', layout]);
    await run('tar', ['-xf', dest, '-C', layout]);
    const bundle = join(out, 'bundle');
    await run('umoci', ['unpack', '--image', `${layout}:1`, bundle]);
    expect(await readFile(join(bundle, 'rootfs/app/hello'), 'utf8')).toBe('hello\n');
    await expect(stat(join(bundle, 'rootfs/bin/ls'))).rejects.toThrow();
  });
});
