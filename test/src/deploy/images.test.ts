/**
 * The service images as shipped: `deploy/images/build.mjs` builds the scheduler's image with
 * `kiln build` (its own local farm, a temp state dir) for linux/amd64 and linux/arm64 on the
 * Debian base it makes (debootstrap, cached in $KILN_IMAGES_CACHE: the first run on a machine
 * takes minutes more), pushes both to the test registry, and with --check runs the image's node
 * on each platform (arm64 through qemu). Then this test reads the pushed index itself: both
 * platforms, the non-root user, the entrypoint, the exposed ports, and sizes that say "small".
 * Needs `npm run build` (the bundled `kiln` and @kiln/testing's dist).
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, makeTempDir, testEnv } from '../harness/index.js';

let tmp: { dir: string; remove: () => void };
beforeAll(() => {
  tmp = makeTempDir('images');
});
afterAll(() => tmp?.remove());

const TYPES = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

interface Descriptor {
  digest: string;
  size: number;
  mediaType: string;
  platform?: { os: string; architecture: string };
}

async function get<T>(url: string, accept = TYPES): Promise<T> {
  const r = await fetch(url, { headers: { accept } });
  if (!r.ok) throw new Error(`GET ${url}: ${r.status}`);
  return (await r.json()) as T;
}

describe('service images', () => {
  it('builds the scheduler image with kiln build for amd64 and arm64, non-root, node runs on both', async () => {
    const registry = testEnv().KILN_TEST_REGISTRY;
    const tag = `t${Date.now().toString(36)}`;
    const run = await new Promise<{ status: number; stderr: string }>((resolve) => {
      execFile(
        process.execPath,
        [
          join(REPO_ROOT, 'deploy/images/build.mjs'),
          '--images',
          'scheduler',
          '--platform',
          'linux/amd64,linux/arm64',
          '--registry',
          registry,
          '--tag',
          tag,
          '--work',
          join(tmp.dir, 'work'),
          '--check',
        ],
        { encoding: 'utf8', timeout: 1_500_000, maxBuffer: 64 << 20 },
        (err, _stdout, stderr) =>
          resolve({ status: err ? ((err as { code?: number }).code ?? 1) : 0, stderr }),
      );
    });
    const said = run.stderr.split('\n').filter((l) => l.startsWith('[images]'));
    expect(run.status, `${said.join('\n')}\n${run.stderr.slice(-4000)}`).toBe(0);
    // The build's own check ran node in the image on both platforms.
    expect(said.some((l) => / linux\/amd64 runs: x64 v20\./.test(l))).toBe(true);
    expect(said.some((l) => / linux\/arm64 runs: arm64 v20\./.test(l))).toBe(true);

    const base = `http://${registry}/v2/kiln/scheduler`;
    const index = await get<{ manifests: Descriptor[] }>(`${base}/manifests/${tag}`);
    const platforms = index.manifests.map((m) => `${m.platform?.os}/${m.platform?.architecture}`);
    expect(platforms.sort()).toEqual(['linux/amd64', 'linux/arm64']);
    for (const m of index.manifests) {
      const manifest = await get<{ config: Descriptor; layers: Descriptor[] }>(
        `${base}/manifests/${m.digest}`,
        m.mediaType,
      );
      const config = await get<{
        architecture: string;
        os: string;
        config: { User?: string; Entrypoint?: string[]; ExposedPorts?: Record<string, unknown> };
      }>(`${base}/blobs/${manifest.config.digest}`, '*/*');
      expect(config.architecture).toBe(m.platform?.architecture);
      expect(config.config.User).toBe('65534:65534');
      expect(config.config.Entrypoint).toEqual([
        '/usr/local/bin/node',
        '/opt/kiln/kiln-scheduler.mjs',
      ]);
      expect(Object.keys(config.config.ExposedPorts ?? {}).sort()).toEqual([
        '8470/tcp',
        '9090/tcp',
      ]);
      // The Debian base, node and the bundle: three layers, well under 100 MB compressed.
      expect(manifest.layers).toHaveLength(3);
      const bytes = manifest.layers.reduce((n, l) => n + l.size, 0);
      expect(bytes).toBeGreaterThan(20e6);
      expect(bytes).toBeLessThan(100e6);
    }
  }, 1_800_000);
});
