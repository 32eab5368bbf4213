// Compiles native/kiln_sys.c into build/kiln_sys.node with the system C compiler, against the
// Node-API headers of the running Node (or the first found: Node-API's ABI is stable, so any
// Node >= 18 headers do). Nothing is downloaded. Skipped when the addon is newer than its source
// and this script.
//
//   node libs/sys/scripts/build-native.mjs [--force] [--out FILE]
//
// Environment: CC (default cc), KILN_NODE_HEADERS (a directory holding node_api.h). With CC a
// cross compiler (aarch64-linux-gnu-gcc) and --out, it builds another architecture's addon (the
// images, deploy/images/build.mjs).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(pkg, 'native', 'kiln_sys.c');
const outAt = process.argv.indexOf('--out');
const out =
  outAt > 0 && process.argv[outAt + 1]
    ? process.argv[outAt + 1]
    : join(pkg, 'build', 'kiln_sys.node');

const mtime = (p) => (existsSync(p) ? statSync(p).mtimeMs : 0);
if (
  !process.argv.includes('--force') &&
  mtime(out) > Math.max(mtime(src), mtime(fileURLToPath(import.meta.url)))
) {
  process.exit(0);
}

const candidates = [
  process.env.KILN_NODE_HEADERS,
  process.env.npm_config_nodedir && join(process.env.npm_config_nodedir, 'include', 'node'),
  join(dirname(process.execPath), '..', 'include', 'node'),
  '/usr/include/node',
  '/usr/local/include/node',
].filter(Boolean);
const headers = candidates.find((d) => existsSync(join(d, 'node_api.h')));
if (!headers) {
  console.error(
    `[kiln-sys] no Node-API headers (node_api.h) in ${candidates.join(', ')}: ` +
      `install Node's headers (Debian: apt-get install libnode-dev; scripts/setup.sh does) ` +
      `or set KILN_NODE_HEADERS`,
  );
  process.exit(1);
}

mkdirSync(dirname(out), { recursive: true });
const tmp = `${out}.${process.pid}.tmp`;
const cc = process.env.CC || 'cc';
try {
  execFileSync(
    cc,
    [
      '-O2',
      '-Wall',
      '-Wextra',
      '-Werror',
      '-fPIC',
      '-pthread',
      '-shared',
      `-I${headers}`,
      src,
      '-o',
      tmp,
    ],
    { stdio: 'inherit' },
  );
} catch (err) {
  console.error(`[kiln-sys] ${cc} failed to build ${src}: ${err.message}`);
  process.exit(1);
}
renameSync(tmp, out); // atomic: a running process never loads a half-written addon
