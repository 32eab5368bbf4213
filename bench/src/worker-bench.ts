/**
 * Worker runtime benchmark (issue: worker execution engine): exec overhead, our runtime's
 * start-to-exit for `true` against raw `crun run` of the same bundle (target <= 1.5x). Builds
 * (`kiln build`, the path users take) are timed against BuildKit by the `peers` benchmark.
 */
import { benchExec } from './exec-bench.js';
import { printTable } from './table.js';

export async function runWorkerBench(): Promise<void> {
  const ex = await benchExec(30);
  printTable(
    `Exec overhead: start to exit of \`true\` (median of ${ex.iterations}), ${ex.runtime}`,
    ['case', 'ms', 'baseline ms (raw run)', 'ratio', 'target', 'ok'],
    [
      [
        'kiln runtime',
        ex.oursMedianMs,
        ex.rawMedianMs,
        `${ex.ratio.toFixed(2)}x`,
        '<= 1.5x',
        ex.ratio <= 1.5 ? 'yes' : 'NO',
      ],
    ],
  );
}
