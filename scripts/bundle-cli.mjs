// The kiln command as one ESM bundle (cli/dist/bundle/), made from the compiled code after `tsc -b`.
// Why: a `kiln build` is a new process each time, and resolving and loading several hundred
// modules (gRPC, protobufjs, the generated protos...) was a third of its CPU before the build even
// reached the farm. Code only some commands need (the local farm's client, the tar applier of a
// local output, the Dockerfile frontend for an error) stays in chunks loaded on demand. The local
// farm daemon is not bundled: it starts once and runs from cli/dist/farm/daemon.js.
import { build } from 'esbuild';
import { rmSync } from 'node:fs';

const outdir = 'cli/dist/bundle';
rmSync(outdir, { recursive: true, force: true });
await build({
  entryPoints: { main: 'cli/dist/main.js' },
  bundle: true,
  splitting: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  outdir,
  logLevel: 'warning',
  // CommonJS dependencies call require(); give the bundle one.
  banner: {
    js: "import { createRequire as __kilnRequire } from 'node:module'; const require = __kilnRequire(import.meta.url);",
  },
});
