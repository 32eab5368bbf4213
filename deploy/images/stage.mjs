// Stages the build contexts of the service images: OUT/<image>/ with the image's Dockerfile, its
// service bundled into one ES module (the test harness's bundleEntries), and per architecture
// (`<arch>/`) the `node` binary and, for the worker, @kiln/sys's native addon. The Dockerfiles
// COPY `${TARGETARCH}/...`, so one context builds every platform. build.mjs calls this with the
// foreign architecture's node (npm's node-linux-<arch> package) and addon (cross-compiled);
// alone, `node deploy/images/stage.mjs OUT` (after `npm run build`) stages this machine's
// architecture only.
import { copyFileSync, existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleEntries } from '../../libs/testing/dist/bundle.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');

/** The images, their service entry and what each needs beside node. */
export const IMAGES = {
  scheduler: { entry: 'services/scheduler/src/main.ts', name: 'kiln-scheduler' },
  worker: { entry: 'services/worker/src/node/main.ts', name: 'kiln-worker', addon: true },
  'cache-store': { entry: 'services/cache-store/src/main.ts', name: 'kiln-cache-store' },
  cli: { entry: 'cli/src/main.ts', name: 'kiln' },
  // nats-server from Debian: only its Dockerfile.
  nats: {},
  // An S3 API server (the tests' s3rver), standing in for MinIO where its image cannot be had
  // (deploy/compose/compose.s3rver.yaml).
  s3rver: { entry: 'node_modules/s3rver/bin/s3rver.js', name: 's3rver' },
};

/** Docker's architecture name of this machine. */
export const nativeArch = () => ({ x64: 'amd64', arm64: 'arm64' })[process.arch];

/**
 * Writes OUT/<image>/ for each of `images`. `arches` maps an architecture to its `node` binary
 * and addon paths. Returns the context directories by image.
 */
export async function stageImages(out, images, arches) {
  const dirs = {};
  for (const image of images) {
    const spec = IMAGES[image];
    if (!spec) throw new Error(`unknown image ${image} (known: ${Object.keys(IMAGES).join(', ')})`);
    const dir = join(out, image);
    mkdirSync(dir, { recursive: true });
    if (spec.entry) {
      await bundleEntries({ [spec.name]: spec.entry }, dir, {
        addonPath: '/opt/kiln/kiln_sys.node',
      });
      for (const [arch, files] of Object.entries(arches)) {
        mkdirSync(join(dir, arch), { recursive: true });
        copyIfChanged(files.node, join(dir, arch, 'node'));
        if (spec.addon) copyIfChanged(files.addon, join(dir, arch, 'kiln_sys.node'));
      }
    }
    for (const f of readdirSync(join(here, image)))
      copyFileSync(join(here, image, f), join(dir, f));
    dirs[image] = dir;
  }
  return dirs;
}

function copyIfChanged(from, to) {
  if (existsSync(to)) {
    const a = statSync(from);
    const b = statSync(to);
    if (a.size === b.size && b.mtimeMs >= a.mtimeMs) return;
  }
  copyFileSync(from, to);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  if (!process.argv[2]) {
    process.stderr.write('usage: node deploy/images/stage.mjs OUT\n');
    process.exit(2);
  }
  const arch = nativeArch();
  const dirs = await stageImages(resolve(process.argv[2]), Object.keys(IMAGES), {
    [arch]: { node: process.execPath, addon: join(root, 'libs/sys/build/kiln_sys.node') },
  });
  for (const d of Object.values(dirs)) process.stdout.write(`${d}\n`);
}
