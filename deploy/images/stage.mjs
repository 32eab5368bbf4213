// Stages the build contexts of the service images: `node deploy/images/stage.mjs OUT` (after
// `npm run build`) writes OUT/<image>/ with the image's Dockerfile, its service bundled into one
// ES module (the test harness's bundleEntries), the native addon the worker needs, and
// this machine's `node` binary (Debian 12's nodejs is 18; Kiln needs >= 20.9). Then:
//
//   kiln build --platform linux/amd64 --output type=image,name=REGISTRY/kiln/scheduler,push=true \
//     --build-arg BASE=REGISTRY/kiln/debian:bookworm OUT/scheduler
//
// BASE is a Debian 12 image made from Debian's packages (see deploy/README.md, "Images").
// For a multi-platform image, stage on each architecture (the node binary and the addon are
// native) and build each platform from its own stage.
import { copyFileSync, mkdirSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleEntries } from '../../libs/testing/dist/bundle.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const out = resolve(process.argv[2] ?? '');
if (!process.argv[2]) {
  process.stderr.write('usage: node deploy/images/stage.mjs OUT\n');
  process.exit(2);
}

const IMAGES = {
  scheduler: { entry: 'services/scheduler/src/main.ts', name: 'kiln-scheduler' },
  worker: { entry: 'services/worker/src/node/main.ts', name: 'kiln-worker', addon: true },
  'cache-store': { entry: 'services/cache-store/src/main.ts', name: 'kiln-cache-store' },
  cli: { entry: 'cli/src/main.ts', name: 'kiln' },
};

for (const [image, spec] of Object.entries(IMAGES)) {
  const dir = join(out, image);
  mkdirSync(dir, { recursive: true });
  await bundleEntries({ [spec.name]: spec.entry }, dir, { addonPath: '/opt/kiln/kiln_sys.node' });
  if (spec.addon)
    copyFileSync(join(root, 'libs/sys/build/kiln_sys.node'), join(dir, 'kiln_sys.node'));
  copyFileSync(process.execPath, join(dir, 'node'));
  for (const f of readdirSync(join(here, image))) copyFileSync(join(here, image, f), join(dir, f));
  process.stdout.write(`${dir}\n`);
}
