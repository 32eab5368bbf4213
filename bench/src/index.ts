/**
 * Kiln benchmarks. `npm run bench` runs them all; `npm run bench -- llb` runs the named ones.
 * Each prints a table with ratios against a baseline measured in the same run.
 * `peers` takes `--rounds N` (default: $KILN_BENCH_ROUNDS, else 5) and `--workloads a,b,...`.
 */
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { runBuildBench } from './build-bench.js';
import { runDispatchBench } from './dispatch-bench.js';
import { runFreshBench } from './fresh-bench.js';
import { runGcBench } from './gc-bench.js';
import { runLlbBench } from './llb-bench.js';
import { runPeersBench } from './peers-bench.js';
import { runWorkerBench } from './worker-bench.js';

const { values, positionals: only } = parseArgs({
  allowPositionals: true,
  options: { rounds: { type: 'string' }, workloads: { type: 'string' } },
});
const rounds = Number(values.rounds ?? process.env.KILN_BENCH_ROUNDS ?? 5);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`bad round count: ${rounds}`);

const benches: Record<string, () => unknown> = {
  llb: () => runLlbBench(),
  dispatch: () => runDispatchBench(),
  worker: () => runWorkerBench(),
  build: () => runBuildBench(),
  gc: () => runGcBench(),
  fresh: () => runFreshBench(rounds),
  peers: () =>
    runPeersBench({
      rounds,
      workloads: values.workloads?.split(',').filter(Boolean),
      buildkitDir: process.env.KILN_BUILDKIT_DIR,
    }),
};

console.log(
  `kiln bench ${new Date().toISOString()} on ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, node ${process.version}`,
);
for (const [name, run] of Object.entries(benches)) {
  if (only.length && !only.includes(name)) continue;
  await run();
}
