/**
 * Differential: named contexts (`--build-context` / BuildKit's `context:NAME` attributes) and the
 * RUN sandbox attributes (`force-network-mode=none`, `shm-size`, `ulimit`) through Kiln and the
 * reference BuildKit v0.11.6 (`../shared/tools/buildkit`, or `KILN_BUILDKIT_DIR`): the same
 * Dockerfile and base image, the output trees compared. Real processes: buildkitd (runc) through
 * its start script, the local farm daemon, the harness's registry with the fixture busybox image.
 */
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { localFarmSuite } from './local-farm-suite.js';
import { startReferenceBuildkit } from './reference-buildkit.js';
import type { ReferenceBuildkit } from './reference-buildkit.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
const registry = process.env.KILN_TEST_REGISTRY;

const suite = localFarmSuite('buildx-contexts-buildkit');
let buildkitd: ReferenceBuildkit | undefined;

beforeAll(async () => {
  if (!registry) throw new Error('KILN_TEST_REGISTRY is not set: run through the global setup');
  buildkitd = await startReferenceBuildkit(join(suite.dir(), 'buildkit'), registry);
}, 180_000);

afterAll(async () => {
  await buildkitd?.stop();
});

/** Every file of a tree (relative path -> content), for comparison. */
async function tree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const p = join(e.parentPath, e.name);
    out[p.slice(dir.length + 1)] = await readFile(p, 'utf8');
  }
  return out;
}

describe('named contexts and RUN sandbox attributes, Kiln vs BuildKit v0.11.6', () => {
  it('give the same output tree', async () => {
    const ctx = await suite.context({
      Dockerfile: [
        'FROM scratch AS deps',
        'COPY no-such-file /',
        'FROM kiln.invalid/base:1 AS tools',
        'RUN echo tools > /tools',
        'FROM kiln.invalid/base:1 AS probe',
        'COPY --from=deps /lib.txt /deps/',
        'COPY --from=tools /tools /tools',
        'RUN cat /deps/lib.txt /tools > /summary',
        'RUN cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d " " > /net',
        `RUN grep " /dev/shm " /proc/mounts | grep -o "size=[0-9]*k" > /shm`,
        'RUN grep -E "^Max (open files|processes)" /proc/self/limits > /limits',
        'FROM scratch',
        'COPY --from=probe /summary /net /shm /limits /',
      ].join('\n'),
    });
    const deps = join(suite.dir(), 'deps');
    await mkdir(deps);
    await writeFile(join(deps, 'lib.txt'), 'named\n');
    const kilnOut = join(suite.dir(), 'kiln-out');
    const r = await suite.build(
      ctx,
      '--build-context',
      `deps=${deps}`,
      '--build-context',
      `kiln.invalid/base:1=docker-image://${fixture}`,
      '--network',
      'none',
      '--shm-size',
      '80m',
      '--ulimit',
      'nofile=512:1024',
      '--ulimit',
      'nproc=2000:4000',
      '-o',
      `type=local,dest=${kilnOut}`,
    );
    expect(r.out).not.toContain('ERROR');
    expect(r.code).toBe(0);
    const bkOut = join(suite.dir(), 'bk-out');
    await buildkitd!.build(ctx, [
      '--local',
      `deps=${deps}`,
      '--opt',
      'context:deps=local:deps',
      '--opt',
      `context:kiln.invalid/base:1=docker-image://${fixture}`,
      '--opt',
      'force-network-mode=none',
      '--opt',
      `shm-size=${80 * 1024 * 1024}`,
      '--opt',
      'ulimit=nofile=512:1024,nproc=2000:4000',
      '--output',
      `type=local,dest=${bkOut}`,
    ]);
    const kiln = await tree(kilnOut);
    expect(kiln.summary).toBe('named\ntools\n');
    expect(kiln.net).toBe('lo\n');
    expect(kiln).toEqual(await tree(bkOut));
  });
});
