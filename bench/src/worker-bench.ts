/**
 * Worker engine benchmarks (issue: worker execution engine):
 * - exec overhead: our runtime's start-to-exit for `true` against raw `crun run` of the same bundle;
 * - a 2-stage busybox graph (COPY + RUN in a build stage, COPY --from into the final one): cold
 *   (fresh state: pull, unpack, run), fully cached, and after a one-file context change.
 * Baseline measured in the same run: raw `crun run` of `true`. docker and buildah are not
 * installed here (no engine), so they are not run. Targets: exec overhead <= 1.5x raw crun;
 * fully cached solve < 150 ms.
 */
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { LinuxAmd64, copy, image, local, marshal } from '@kiln/llb';
import type { State } from '@kiln/llb';
import { pushFixtures, startRegistry } from '@kiln/test';
import { Engine, benchExec } from '@kiln/worker';
import { median, printTable } from './table.js';

function twoStage(base: string): State {
  const ctx = local('context');
  const build = image(base)
    .file(copy(ctx, '/src', '/app/src', { createDestPath: true }))
    .run({ shlex: 'sh -c "cat /app/src/*.txt > /app/out.txt"' })
    .root();
  return image(base).file(copy(build, '/app/out.txt', '/out.txt'));
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

export async function runWorkerBench(runs = 7): Promise<void> {
  const ex = await benchExec(30);
  const reg = await startRegistry();
  const work = await mkdtemp(join(tmpdir(), 'kiln-bench-worker-'));
  try {
    await pushFixtures(reg.addr);
    const ctx = join(work, 'ctx');
    await mkdir(join(ctx, 'src'), { recursive: true });
    for (let i = 0; i < 20; i++) await writeFile(join(ctx, 'src', `f${i}.txt`), `line ${i}\n`);
    const def = marshal(twoStage(`${reg.addr}/busybox:latest`), { platform: LinuxAmd64 }).toBytes();
    const session = { localDirs: { context: ctx } };

    const cold: number[] = [];
    for (let i = 0; i < 3; i++) {
      const engine = await Engine.open({ stateDir: join(work, `cold-${i}`) });
      cold.push(await timed(() => engine.solve(def, { session })));
    }
    const engine = await Engine.open({ stateDir: join(work, 'warm') });
    await engine.solve(def, { session });
    const cached: number[] = [];
    for (let i = 0; i < runs; i++) {
      let executed = -1;
      cached.push(
        await timed(async () => {
          executed = (await engine.solve(def, { session })).stats.executed;
        }),
      );
      if (executed !== 0) throw new Error(`cached solve ran ${executed} vertices`);
    }
    const changed: number[] = [];
    for (let i = 0; i < runs; i++) {
      await writeFile(join(ctx, 'src', 'f0.txt'), `changed ${i}\n`);
      changed.push(await timed(() => engine.solve(def, { session })));
    }

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
    const raw = ex.rawMedianMs;
    const row = (name: string, xs: number[], target: string, ok: string): (string | number)[] => [
      name,
      median(xs),
      raw,
      `${(median(xs) / raw).toFixed(1)}x`,
      target,
      ok,
    ];
    printTable(
      '2-stage busybox graph (COPY + RUN, COPY --from), engine.solve (median)',
      ['case', 'ms', `baseline ms (raw ${ex.runtime} run)`, 'ratio', 'target', 'ok'],
      [
        row(`cold (fresh state, pull + run; ${cold.length} runs)`, cold, '', ''),
        row(`fully cached (${runs} runs)`, cached, '< 150 ms', median(cached) < 150 ? 'yes' : 'NO'),
        row(`one context file changed (${runs} runs)`, changed, '', ''),
      ],
    );
  } finally {
    await reg.stop();
    await rm(work, { recursive: true, force: true });
  }
}
