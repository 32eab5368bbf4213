/**
 * Dockerfile frontend and `kiln build` benchmarks (issue: Dockerfile frontend):
 * - parse + convert of a generated 500-instruction Dockerfile (target < 100 ms), against the bare
 *   parse alone as baseline;
 * - `kiln build` (the CLI as a user runs it: a new process each time) of a 2-stage Dockerfile cold,
 *   fully cached and after a one-file change, against `kiln --version` (process start and module
 *   load, the floor of any invocation). docker and buildah are not installed here.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { benchConvert } from '@kiln/dockerfile';
import { pushFixtures, startRegistry } from '@kiln/test';
import { median, printTable } from './table.js';

const run = promisify(execFile);
const kilnBin = resolve(dirname(fileURLToPath(import.meta.url)), '../../cli/bin/kiln.js');

async function timed(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const t0 = performance.now();
  await run(process.execPath, [kilnBin, ...args], { env, maxBuffer: 64 << 20 });
  return performance.now() - t0;
}

export async function runBuildBench(runs = 5): Promise<void> {
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

  const reg = await startRegistry();
  const work = await mkdtemp(join(tmpdir(), 'kiln-bench-build-'));
  try {
    await pushFixtures(reg.addr);
    const ctx = join(work, 'ctx');
    await mkdir(join(ctx, 'src'), { recursive: true });
    for (let i = 0; i < 50; i++) await writeFile(join(ctx, 'src', `f${i}.txt`), `line ${i}\n`);
    await writeFile(
      join(ctx, 'Dockerfile'),
      [
        'ARG BASE',
        'FROM ${BASE} AS build',
        'WORKDIR /app',
        'COPY src ./src',
        'RUN cat src/*.txt > out.txt',
        'FROM ${BASE}',
        'COPY --from=build /app/out.txt /out.txt',
        '',
      ].join('\n'),
    );
    const args = [
      'build',
      ctx,
      '--progress',
      'plain',
      '--build-arg',
      `BASE=${reg.addr}/busybox:latest`,
      '-o',
      `type=local,dest=${join(work, 'out')}`,
    ];
    const base = { ...process.env };
    const floor = median(await Promise.all([0, 1, 2].map(() => timed(['--version'], base))));
    const cold: number[] = [];
    for (let i = 0; i < 3; i++)
      cold.push(await timed(args, { ...base, KILN_STATE_DIR: join(work, `cold-${i}`) }));
    const warmEnv = { ...base, KILN_STATE_DIR: join(work, 'warm') };
    await timed(args, warmEnv);
    const cached: number[] = [];
    for (let i = 0; i < runs; i++) cached.push(await timed(args, warmEnv));
    const changed: number[] = [];
    for (let i = 0; i < runs; i++) {
      await writeFile(join(ctx, 'src', 'f0.txt'), `changed ${i}\n`);
      changed.push(await timed(args, warmEnv));
    }
    const row = (name: string, xs: number[]): (string | number)[] => [
      name,
      median(xs),
      floor,
      `${(median(xs) / floor).toFixed(1)}x`,
    ];
    printTable(
      'kiln build of a 2-stage Dockerfile, wall time of the CLI process (median)',
      ['case', 'ms', 'baseline ms (kiln --version)', 'ratio'],
      [
        row('cold (fresh state)', cold),
        row(`fully cached (${runs} runs)`, cached),
        row(`one context file changed (${runs} runs)`, changed),
      ],
    );
  } finally {
    await reg.stop();
    await rm(work, { recursive: true, force: true });
  }
}
