/**
 * Kiln benchmarks. `npm run bench` runs them all; `npm run bench -- llb` runs the named ones.
 * Each prints a table with ratios against a baseline measured in the same run.
 */
import { cpus } from 'node:os';
import { runBuildBench } from './build-bench.js';
import { runDispatchBench } from './dispatch-bench.js';
import { runLlbBench } from './llb-bench.js';
import { runWorkerBench } from './worker-bench.js';

const benches: Record<string, () => unknown> = {
  llb: () => runLlbBench(),
  dispatch: () => runDispatchBench(),
  worker: () => runWorkerBench(),
  build: () => runBuildBench(),
};

const only = process.argv.slice(2);
console.log(
  `kiln bench ${new Date().toISOString()} on ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, node ${process.version}`,
);
for (const [name, run] of Object.entries(benches)) {
  if (only.length && !only.includes(name)) continue;
  await run();
}
