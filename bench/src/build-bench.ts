/**
 * Dockerfile frontend and CLI start benchmarks (issue: Dockerfile frontend; issue 9):
 * - parse + convert of a generated 500-instruction Dockerfile (target < 100 ms), against the bare
 *   parse alone as baseline;
 * - `kiln --version` (a new CLI process: Node start and the CLI's module load, the floor of every
 *   invocation) against `node -e 0` (Node start alone).
 * `kiln build` itself is timed against BuildKit by the `peers` benchmark.
 */
import { execFile } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { benchConvert } from './convert-bench.js';
import { median, printTable } from './table.js';

const run = promisify(execFile);
const kilnBin = resolve(dirname(fileURLToPath(import.meta.url)), '../../cli/bin/kiln.js');

async function timed(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  await run(cmd, args);
  return performance.now() - t0;
}

export async function runBuildBench(runs = 9): Promise<void> {
  const conv = Array.from({ length: 9 }, () => benchConvert());
  const parseMs = median(conv.map((c) => c.parseMs));
  const totalMs = median(conv.map((c) => c.parseMs + c.convertMs));
  printTable(
    `Dockerfile frontend: ${conv[0]!.instructions} instructions (median of ${conv.length})`,
    ['case', 'ms', 'baseline ms (parse only)', 'ratio', 'target', 'ok'],
    [
      [
        'parse + convert + marshal',
        totalMs,
        parseMs,
        `${(totalMs / parseMs).toFixed(1)}x`,
        '< 100 ms',
        totalMs < 100 ? 'yes' : 'NO',
      ],
    ],
  );

  // A warm-up of each (page cache), then interleaved so that other load falls on both alike.
  // `kiln` as a user runs it (the command, which starts Node itself), `node -e 0` as Node is run.
  const kilnRun = (): Promise<number> => timed(kilnBin, ['--version']);
  const nodeRun = (): Promise<number> => timed(process.execPath, ['-e', '0']);
  await kilnRun();
  await nodeRun();
  const kiln: number[] = [];
  const node: number[] = [];
  for (let i = 0; i < runs; i++) {
    kiln.push(await kilnRun());
    node.push(await nodeRun());
  }
  const k = median(kiln);
  const n = median(node);
  printTable(
    `CLI start: a new process each time (median of ${runs}, interleaved)`,
    ['case', 'ms', 'baseline ms (node -e 0)', 'ratio'],
    [['kiln --version', k, n, `${(k / n).toFixed(1)}x`]],
  );
}
