/**
 * SOURCE_DATE_EPOCH (issue 15 item 4): the build argument sets the image config's `created` and
 * its history times as BuildKit v0.11.6 does (a differential against the reference buildkitd);
 * and with BuildKit's `rewrite-timestamp=true` exporter option the layers a build makes are
 * byte-reproducible: the same Dockerfile whose RUN writes files (with times far in the future,
 * different every run) built with `--no-cache` on two workers (two local farms, each its own
 * worker, snapshots and store) gives the same layer, config and manifest digests, every file
 * time in those layers clamped to the epoch. Real processes: the local farm
 * daemon bundled from source, crun, the fixture image.
 */
import { execFile } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { differentialSuite } from './differential-suite.js';
import { runKiln } from './run-kiln.js';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
const EPOCH = 1700000000;

const suite = differentialSuite('sde');

interface Image {
  manifestDigest: string;
  manifest: { config: { digest: string }; layers: { digest: string }[] };
  config: { created?: string; history: { created?: string; created_by?: string }[] };
  blob: (d: string) => string;
}

/** The one image of an OCI tarball. */
async function image(tarball: string): Promise<Image> {
  const dir = `${tarball}.d`;
  await mkdir(dir, { recursive: true });
  await run('tar', ['-xf', tarball, '-C', dir]);
  const blob = (d: string): string => join(dir, 'blobs/sha256', d.slice('sha256:'.length));
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as {
    manifests: { digest: string }[];
  };
  const manifestDigest = index.manifests[0]!.digest;
  const manifest = JSON.parse(await readFile(blob(manifestDigest), 'utf8')) as Image['manifest'];
  const config = JSON.parse(
    await readFile(blob(manifest.config.digest), 'utf8'),
  ) as Image['config'];
  return { manifestDigest, manifest, config, blob };
}

/** Path -> mtime (seconds) of every entry of a gzip layer. */
async function layerTimes(file: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const extract = tar.extract();
  extract.on('entry', (h, stream, next) => {
    out.set(h.name, Math.floor((h.mtime?.getTime() ?? 0) / 1000));
    stream.on('end', next).resume();
  });
  await pipeline(createReadStream(file), createGunzip(), extract);
  return out;
}

async function context(name: string, dockerfile: string): Promise<string> {
  const ctx = join(suite.dir(), `${name}-ctx`);
  await mkdir(ctx, { recursive: true });
  await writeFile(join(ctx, 'Dockerfile'), dockerfile);
  await writeFile(join(ctx, 'a'), 'a\n');
  return ctx;
}

async function kiln(
  args: string[],
  stateDir = suite.state(),
): Promise<{ code: number; out: string }> {
  return runKiln(['build', '--progress', 'plain', ...args], { KILN_STATE_DIR: stateDir });
}

describe('SOURCE_DATE_EPOCH', () => {
  it('sets created and the history times as BuildKit v0.11.6', async () => {
    const ctx = await context(
      'sde-config',
      'ARG BASE\nARG G=g\nFROM ${BASE}\nARG SOURCE_DATE_EPOCH\nARG E=1\nARG D=x${E} O=orig G\n' +
        'RUN echo a > /a\nCOPY a /b\nENV X=1\nWORKDIR /w\n',
    );
    const bkout = join(suite.dir(), 'sde-config-buildkit.tar');
    const kout = join(suite.dir(), 'sde-config-kiln.tar');
    await suite
      .bk()
      .build(ctx, [
        '--opt',
        `build-arg:BASE=${fixture}`,
        '--opt',
        `build-arg:SOURCE_DATE_EPOCH=${EPOCH}`,
        '--opt',
        'build-arg:O=over',
        '--output',
        `type=oci,dest=${bkout}`,
      ]);
    const k = await kiln([
      ctx,
      '--build-arg',
      `BASE=${fixture}`,
      '--build-arg',
      `SOURCE_DATE_EPOCH=${EPOCH}`,
      '--build-arg',
      'O=over',
      '--output',
      `type=oci,dest=${kout}`,
    ]);
    expect(k.code, k.out).toBe(0);
    const [b, kc] = [(await image(bkout)).config, (await image(kout)).config];
    const times = (c: Image['config']) => ({
      created: c.created,
      history: c.history.map((h) => [h.created, h.created_by]),
    });
    expect(times(kc)).toEqual(times(b));
    expect(kc.history.at(-1)!.created).toBe('2023-11-14T22:13:20Z');
  }, 600_000);

  it('rewrite-timestamp=true: the same layers and digests from two workers, --no-cache', async () => {
    // Every run writes the same content with other times, all after the epoch.
    const ctx = await context(
      'sde-rewrite',
      'ARG BASE\nFROM ${BASE}\nCOPY a /ctx-a\n' +
        'RUN mkdir -p /out/d && echo same > /out/d/f && ' +
        't=$(( $(date +%s) + 100000 + RANDOM )) && touch -d "@$t" /out/d/f && ' +
        'echo two > /out/g\n',
    );
    const build = async (
      name: string,
      rewrite: boolean,
      stateDir = suite.state(),
    ): Promise<Image> => {
      const out = join(suite.dir(), `${name}.tar`);
      const r = await kiln(
        [
          ctx,
          '--no-cache',
          '--build-arg',
          `BASE=${fixture}`,
          '--build-arg',
          `SOURCE_DATE_EPOCH=${EPOCH}`,
          '--output',
          `type=oci,dest=${out}${rewrite ? ',rewrite-timestamp=true' : ''}`,
        ],
        stateDir,
      );
      expect(r.code, r.out).toBe(0);
      return image(out);
    };
    const one = await build('rewrite-1', true);
    // The second on another farm: another worker, which has never run any of it.
    const two = await build('rewrite-2', true, suite.state(1));
    expect(two.manifest.layers).toEqual(one.manifest.layers);
    expect(two.manifest.config.digest).toBe(one.manifest.config.digest);
    expect(two.manifestDigest).toBe(one.manifestDigest);
    // The RUN's layer: every time clamped to the epoch.
    const runLayer = await layerTimes(one.blob(one.manifest.layers.at(-1)!.digest));
    expect(runLayer.get('out/d/f')).toBe(EPOCH);
    for (const [p, t] of runLayer) expect(t, p).toBeLessThanOrEqual(EPOCH);

    // Without the option the layer keeps the RUN's times (so the two builds above could differ).
    const kept = await build('kept', false);
    const keptTimes = await layerTimes(kept.blob(kept.manifest.layers.at(-1)!.digest));
    expect(keptTimes.get('out/d/f')).toBeGreaterThan(EPOCH + 100000);
    expect(kept.manifest.layers.at(-1)!.digest).not.toBe(one.manifest.layers.at(-1)!.digest);
    // The base image's layer is kept as pulled either way.
    expect(one.manifest.layers[0]).toEqual(kept.manifest.layers[0]);
  }, 600_000);

  it('rewrite-timestamp=true without SOURCE_DATE_EPOCH is an error before the build', async () => {
    const ctx = await context('sde-missing', 'ARG BASE\nFROM ${BASE}\n');
    const r = await kiln([
      ctx,
      '--build-arg',
      `BASE=${fixture}`,
      '--output',
      `type=oci,dest=${join(suite.dir(), 'never.tar')},rewrite-timestamp=true`,
    ]);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/rewrite-timestamp=true needs SOURCE_DATE_EPOCH/);
  }, 300_000);
});
