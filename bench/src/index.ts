/**
 * Kiln benchmarks. `npm run bench` runs them all; `npm run bench -- llb` runs the named ones.
 * Each prints a table with ratios against a baseline measured in the same run.
 * `peers` takes `--rounds N` (default: $KILN_BENCH_ROUNDS, else 5) and `--workloads a,b,...`;
 * `chaos` takes `--builds N` (default 100), `--workers N` (default 8), `--concurrency N` (default 4).
 */
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { runBuildBench } from './build-bench.js';
import { runChaosBench } from './chaos-bench.js';
import { runDispatchBench } from './dispatch-bench.js';
import { runFreshBench } from './fresh-bench.js';
import { runGcBench } from './gc-bench.js';
import { runLlbBench } from './llb-bench.js';
import { runPeersBench } from './peers-bench.js';
import { runWorkerBench } from './worker-bench.js';

const { values, positionals: only } = parseArgs({
  allowPositionals: true,
  options: {
    rounds: { type: 'string' },
    workloads: { type: 'string' },
    builds: { type: 'string' },
    workers: { type: 'string' },
    concurrency: { type: 'string' },
  },
});
const rounds = Number(values.rounds ?? process.env.KILN_BENCH_ROUNDS ?? 5);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`bad round count: ${rounds}`);
/** A positive integer flag, or undefined when not given. */
const count = (name: 'builds' | 'workers' | 'concurrency'): number | undefined => {
  const v = values[name];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 10_000) throw new Error(`bad --${name}: ${v}`);
  return n;
};

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
  // Not in a plain `npm run bench`: it takes 10-15 minutes and kills processes.
  chaos: () =>
    runChaosBench({
      ...(count('builds') ? { builds: count('builds') } : {}),
      ...(count('workers') ? { workers: count('workers') } : {}),
      ...(count('concurrency') ? { concurrency: count('concurrency') } : {}),
    }),
};
const optIn = new Set(['chaos']);

console.log(
  `kiln bench ${new Date().toISOString()} on ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, node ${process.version}`,
);
for (const [name, run] of Object.entries(benches)) {
  if (only.length ? !only.includes(name) : optIn.has(name)) continue;
  await run();
}
