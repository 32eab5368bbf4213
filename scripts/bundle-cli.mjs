// The kiln command as one CommonJS bundle (cli/dist/bundle/main.cjs), made from the compiled code
// after `tsc -b`, and run by cli/bin/kiln.js from a V8 code cache.
// Why: a `kiln build` is a new process each time. Resolving and loading several hundred modules
// (gRPC, protobufjs, the generated protos...) was a third of its CPU before the build reached the
// farm, so they are bundled into one file; compiling that file was then the largest part left
// (~110 ms), and Node 20 has no compile cache for ES modules, so the bundle is CommonJS and the
// bin compiles it with `vm.Script` and its `cachedData` (see cli/bin/kiln.js). Code only some
// commands need (the local farm's client, the tar applier of a local output, the Dockerfile
// frontend for an error) stays behind lazy initialisers: it is parsed but not run or compiled
// unless used. The local farm daemon is not bundled: it starts once and runs from
// cli/dist/farm/daemon.js.
// Measured: fully cached trivial `kiln build` on a warm local farm, medians of interleaved A/B runs
// (user+sys CPU): ESM code-split bundle 0.205 s wall / 0.19 s CPU, this bundle from its code cache
// (and the LLB reflection root made lazy) 0.155 s / 0.14 s; on a busier machine 0.29 / 0.22 vs
// 0.22 / 0.15. Loading the bundle: ~30 ms compiling without the cache, ~8 ms with it.
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';

const outdir = 'cli/dist/bundle';
rmSync(outdir, { recursive: true, force: true });
await build({
  entryPoints: { main: 'cli/dist/main.js' },
  bundle: true,
  platform: 'node',
  format: 'cjs',
  outExtension: { '.js': '.cjs' },
  target: 'node20',
  outdir,
  logLevel: 'warning',
  // The OpenTelemetry SDK loads only when OTEL_EXPORTER_OTLP_ENDPOINT is set (@kiln/ops
  // startTracing): from node_modules then, never parsed by a build without it.
  external: ['@opentelemetry/sdk-node'],
  // cli/src/farm/paths.ts finds the package from its own URL.
  define: { 'import.meta.url': '__kilnImportMetaUrl' },
  banner: { js: "const __kilnImportMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
});
const bytes = readFileSync(`${outdir}/main.cjs`);
// cli/bin/kiln.js reads the bundle as latin1 (a one-byte string, no UTF-8 decoding of 2.4 MB):
// right only for ASCII, which esbuild writes by default (charset ascii escapes the rest).
const nonAscii = bytes.findIndex((b) => b > 0x7f);
if (nonAscii >= 0) throw new Error(`${outdir}/main.cjs is not ASCII (byte ${nonAscii})`);
// The bundle's content hash, the key of its code cache (hashing it at each start would cost ~4 ms).
const hash = createHash('sha256').update(bytes).digest('hex');
writeFileSync(`${outdir}/main.cjs.sha256`, `${hash}\n`);
