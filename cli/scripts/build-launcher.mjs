// Compiles cli/native/kiln-launch.c (the `kiln` command's native launcher, which hands a build to
// a warm client process: cli/src/warm-client.ts) into cli/dist/kiln-launch with the system C
// compiler (CC, default cc), written to a temporary name and renamed: a running command never
// executes a half-written file. Nothing is downloaded.
import { execFileSync } from 'node:child_process';
import { mkdirSync, renameSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const cli = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(cli, 'dist', 'kiln-launch');
const tmp = `${out}.${process.pid}.tmp`;
const cc = process.env.CC || 'cc';
mkdirSync(dirname(out), { recursive: true });
try {
  execFileSync(
    cc,
    ['-O2', '-Wall', '-Wextra', '-Werror', join(cli, 'native', 'kiln-launch.c'), '-o', tmp],
    {
      stdio: 'inherit',
    },
  );
} catch (err) {
  console.error(`[kiln-launch] ${cc} failed: ${err.message}`);
  process.exit(1);
}
renameSync(tmp, out);
