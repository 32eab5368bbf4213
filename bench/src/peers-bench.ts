/**
 * Kiln against its peer, the reference BuildKit v0.11.6 (issue 9, "benchmarks of the real path"):
 * the same Dockerfiles, contexts and base image (the fixture busybox index, linux/amd64 +
 * linux/arm64, in a local registry) built by `kiln build` as a user runs it (a new CLI process
 * each time, its own KILN_STATE_DIR, no `--addr`) and by `buildctl build --frontend dockerfile.v0`
 * against a buildkitd started for the run, both writing the image as an OCI tarball. Wall time of
 * each client process; rounds interleaved (kiln, buildkit, kiln, buildkit...) after a warm-up
 * round that is not counted; medians and their ratio. Before the timed rounds of each workload,
 * the two images' root filesystems are compared: the benchmark refuses to time different work.
 *
 * Workloads: (a) 2 stages, 3 RUN, COPY, COPY --from; (b) 8 parallel stages and one COPYing from
 * all of them; (c) a context of 5,000 small files (`COPY . /src`, RUN); (d) (a) for linux/amd64
 * and linux/arm64; (e) `FROM busybox` + `RUN true`, fully cached only. Cases: cold (`--no-cache`
 * on both), fully cached (the same inputs again), one input file changed (a file a COPY reads is
 * edited before each round).
 *
 * `kiln build` leaves a warm client process for the next command (docs/local-farm.md, "The warm
 * client"), in a cache dir of the run's own. After each kiln run the benchmark waits until that
 * process has finished loading (its CPU time stops growing), so that its start-up never overlaps
 * the next timed run, BuildKit's or Kiln's.
 */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { REPO_ROOT, pushFixtures, startRegistry } from '@kiln/test';
import type { RegistryHandle } from '@kiln/test';
import { diffRootfs, ociRootfs } from '@kiln/testing';
import { median, printTable } from './table.js';

export interface PeersBenchOptions {
  /** Timed rounds per case (a warm-up round comes first). */
  rounds: number;
  /** Workload names to run (default: all). */
  workloads?: readonly string[];
  /** The directory of buildkit.sh (default: ../shared/tools/buildkit next to the repository). */
  buildkitDir?: string;
}

type CaseName = 'cold' | 'cached' | 'changed';

interface Workload {
  name: string;
  title: string;
  /** Writes the context (Dockerfile included) for a base image reference. */
  write(ctx: string, base: string): Promise<void>;
  /** A context file a COPY reads, edited before each round of the `changed` case. */
  changeFile?: string;
  platforms?: string;
  cases: CaseName[];
  /** Target ratio (kiln / buildkit) of the fully cached case. */
  cachedTarget: { max: number; stretch?: number };
}

const BUILD_TIMEOUT_MS = 300_000;
const DAEMON_TIMEOUT_MS = 60_000;

const dockerfile = (lines: string[]): string => `${lines.join('\n')}\n`;

async function writeFiles(dir: string, files: Record<string, string>): Promise<void> {
  for (const [name, content] of Object.entries(files)) {
    await mkdir(join(dir, name, '..'), { recursive: true });
    await writeFile(join(dir, name), content);
  }
}

const twoStage = (base: string): string =>
  dockerfile([
    `FROM ${base} AS build`,
    'WORKDIR /app',
    'COPY src ./src',
    'RUN cat src/*.txt > out.txt',
    'RUN wc -l out.txt > count.txt',
    `FROM ${base}`,
    'COPY --from=build /app/out.txt /app/count.txt /out/',
    // Sizes, not `ls -l`: its minute differs between two builds a minute boundary apart.
    'RUN wc -c /out/* > /out/list.txt',
  ]);

const twoStageFiles = (base: string): Record<string, string> => ({
  Dockerfile: twoStage(base),
  ...Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`src/f${i}.txt`, `line ${i}\n`])),
});

const ALL_CASES: CaseName[] = ['cold', 'cached', 'changed'];
const CASE_NAMES: Record<CaseName, string> = {
  cold: 'cold (--no-cache)',
  cached: 'fully cached',
  changed: 'one file changed',
};

const WORKLOADS: Workload[] = [
  {
    name: 'a',
    title: '2-stage',
    write: (ctx, base) => writeFiles(ctx, twoStageFiles(base)),
    changeFile: 'src/f0.txt',
    cases: ALL_CASES,
    cachedTarget: { max: 1, stretch: 0.7 },
  },
  {
    name: 'b',
    title: '8 parallel stages',
    write: (ctx, base) => {
      const stages = Array.from({ length: 8 }, (_, i) => [
        `FROM ${base} AS s${i}`,
        `COPY s${i}.txt /in.txt`,
        `RUN for j in 1 2 3; do cat /in.txt; done > /out${i}.txt`,
      ]).flat();
      const final = [
        `FROM ${base}`,
        ...Array.from({ length: 8 }, (_, i) => `COPY --from=s${i} /out${i}.txt /all/`),
        'RUN cat /all/* > /all.txt',
      ];
      return writeFiles(ctx, {
        Dockerfile: dockerfile([...stages, ...final]),
        ...Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`s${i}.txt`, `stage ${i}\n`])),
      });
    },
    changeFile: 's0.txt',
    cases: ALL_CASES,
    cachedTarget: { max: 1, stretch: 0.7 },
  },
  {
    name: 'c',
    title: '5,000-file context',
    write: (ctx, base) =>
      writeFiles(ctx, {
        Dockerfile: dockerfile([
          `FROM ${base}`,
          'COPY . /src',
          'RUN find /src -type f | wc -l > /count',
        ]),
        ...Object.fromEntries(
          Array.from({ length: 5000 }, (_, i) => [`d${i % 50}/f${i}.txt`, `file ${i}\n`]),
        ),
      }),
    changeFile: 'd0/f0.txt',
    cases: ALL_CASES,
    cachedTarget: { max: 1, stretch: 0.7 },
  },
  {
    name: 'd',
    title: '2-stage, amd64+arm64',
    write: (ctx, base) => writeFiles(ctx, twoStageFiles(base)),
    changeFile: 'src/f0.txt',
    platforms: 'linux/amd64,linux/arm64',
    cases: ALL_CASES,
    cachedTarget: { max: 1, stretch: 0.7 },
  },
  {
    name: 'e',
    title: 'trivial',
    write: (ctx, base) => writeFiles(ctx, { Dockerfile: dockerfile([`FROM ${base}`, 'RUN true']) }),
    cases: ['cached'],
    cachedTarget: { max: 1.2 },
  },
];

/** Children started by the benchmark, killed on cleanup (SIGINT/SIGTERM, failure). */
const children = new Set<ChildProcess>();

/**
 * Runs a client process to completion and returns its wall time in ms; rejects with the tail of
 * its output when it fails or outlives `timeoutMs`.
 */
function timedRun(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let out = '';
    const keep = (b: Buffer): void => {
      out = (out + b.toString()).slice(-8_000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? BUILD_TIMEOUT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      children.delete(child);
      reject(err);
    });
    child.on('close', (code, signal) => {
      const ms = performance.now() - t0;
      clearTimeout(timer);
      children.delete(child);
      if (code === 0) resolve(ms);
      else
        reject(
          new Error(
            `${cmd} ${args.join(' ')} failed (${signal ?? `exit ${code}`}, after ${(ms / 1000).toFixed(1)} s):\n${out}`,
          ),
        );
    });
  });
}

/** Runs a short command synchronously (daemon start/stop, probes); output and exit status. */
function runSync(
  cmd: string,
  args: string[],
  env?: NodeJS.ProcessEnv,
  timeoutMs = DAEMON_TIMEOUT_MS,
): { ok: boolean; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { env, encoding: 'utf8', timeout: timeoutMs });
  return {
    ok: r.status === 0,
    stdout: r.stdout ?? '',
    stderr: `${r.stderr ?? ''}${r.error ? String(r.error) : ''}`,
  };
}

/** Mount points at or under `dir` (a daemon killed mid-build may leave some). */
function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((l) => (l.split(' ')[1] ?? '').replace(/\\040/g, ' '))
    .filter((m) => m === dir || m.startsWith(`${dir}/`))
    .sort((x, y) => y.length - x.length);
}

const version = (cmd: string, args: string[]): string => {
  const r = runSync(cmd, args, undefined, 10_000);
  return r.ok ? r.stdout.trim().split('\n')[0]! : 'unknown';
};

export async function runPeersBench(opts: PeersBenchOptions): Promise<void> {
  const rounds = opts.rounds;
  const buildkitSh = join(
    opts.buildkitDir ?? join(REPO_ROOT, '../shared/tools/buildkit'),
    'buildkit.sh',
  );
  const kilnBin = join(REPO_ROOT, 'cli/bin/kiln.js');
  const workloads = WORKLOADS.filter(
    (w) => !opts.workloads?.length || opts.workloads.includes(w.name),
  );
  const load = (): string =>
    loadavg()
      .map((l) => l.toFixed(2))
      .join(' ');
  console.log(
    `\nPeers: kiln build vs buildctl + buildkitd (reference v0.11.6); node ${process.version}, ` +
      `kernel ${release()}, load average ${load()} at start`,
  );

  const work = await mkdtemp(join(tmpdir(), 'kiln-bench-peers-'));
  // The local farm of a state dir of its own; never a farm KILN_ADDR names.
  const kilnEnv: NodeJS.ProcessEnv = {
    ...process.env,
    KILN_STATE_DIR: join(work, 'kiln-state'),
    KILN_CACHE_DIR: join(work, 'kiln-cache'),
  };
  const warmDir = join(work, 'kiln-cache', 'warm');
  delete kilnEnv.KILN_ADDR;
  const bkDir = join(work, 'buildkit');
  let reg: RegistryHandle | undefined;
  let bkStarted = false;
  // `kiln farm` (a warm local farm daemon kept between builds) is stopped at the end when it exists.
  const farm = runSync(kilnBin, ['farm', '--help'], kilnEnv);
  const hasFarm = farm.ok && /kiln farm/.test(farm.stdout);

  let cleaned: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaned ??= (async () => {
      for (const c of children) c.kill('SIGKILL');
      for (const pid of warmPids(warmDir)) {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          // Gone already.
        }
      }
      if (hasFarm) {
        const r = runSync(kilnBin, ['farm', 'stop'], kilnEnv);
        if (!r.ok) console.error(`kiln farm stop failed: ${r.stderr.trim()}`);
      }
      if (bkStarted) {
        const r = runSync('bash', [buildkitSh, 'stop', bkDir]);
        if (!r.ok) console.error(`buildkit.sh stop failed: ${r.stderr.trim()}`);
      }
      await reg?.stop();
      const left = mountsUnder(work);
      for (const m of left) runSync('umount', ['-l', m]);
      if (mountsUnder(work).length)
        console.error(`left ${work} in place: mounts remain under it (${left.join(', ')})`);
      else await rm(work, { recursive: true, force: true });
    })());
  const onSignal = (sig: NodeJS.Signals): void => {
    console.error(`\n${sig}: stopping buildkitd and the registry, removing ${work}`);
    void cleanup().finally(() => process.exit(128 + (sig === 'SIGINT' ? 2 : 15)));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    reg = await startRegistry();
    const { image } = await pushFixtures(reg.addr);
    const bin = runSync('bash', [buildkitSh, 'bin']);
    if (!bin.ok) throw new Error(`buildkit.sh bin (${buildkitSh}) failed: ${bin.stderr}`);
    const buildctl = join(bin.stdout.trim(), 'buildctl');
    bkStarted = true;
    const started = runSync('bash', [buildkitSh, 'start', bkDir, reg.addr]);
    if (!started.ok)
      throw new Error(
        `the reference buildkitd did not start (it needs root, runc, and the host fixes of ` +
          `scripts/setup.sh):\n${started.stderr.trim()}`,
      );
    const bkAddr = started.stdout.trim();
    console.log(
      `kiln ${version(kilnBin, ['--version'])}` +
        `${hasFarm ? ' (warm farm: `kiln farm stop` at the end)' : ' (embedded farm per invocation)'}, ` +
        `buildctl ${version(buildctl, ['--version'])}, registry ${reg.addr}, rounds ${rounds} + 1 warm-up`,
    );

    const rows: (string | number)[][] = [];
    let failures = 0;
    for (const w of workloads) {
      const ctx = join(work, `ctx-${w.name}`);
      await w.write(ctx, image);
      const out = { kiln: join(work, `kiln-${w.name}.tar`), bk: join(work, `bk-${w.name}.tar`) };
      const kilnArgs = (c: CaseName): string[] => [
        'build',
        ctx,
        '--progress',
        'plain',
        '-o',
        `type=oci,dest=${out.kiln}`,
        ...(w.platforms ? ['--platform', w.platforms] : []),
        ...(c === 'cold' ? ['--no-cache'] : []),
      ];
      const bkArgs = (c: CaseName): string[] => [
        '--addr',
        bkAddr,
        'build',
        '--progress',
        'plain',
        '--frontend',
        'dockerfile.v0',
        '--local',
        `context=${ctx}`,
        '--local',
        `dockerfile=${ctx}`,
        '--output',
        `type=oci,dest=${out.bk}`,
        ...(w.platforms ? ['--opt', `platform=${w.platforms}`] : []),
        ...(c === 'cold' ? ['--no-cache'] : []),
      ];
      let checked = false;
      let edits = 0;
      for (const c of w.cases) {
        const caseName = CASE_NAMES[c];
        const t = c === 'cached' ? w.cachedTarget : { max: 1 };
        const target = `<= ${t.max.toFixed(1)}x${t.stretch ? ` (stretch ${t.stretch}x)` : ''}`;
        const times = { kiln: [] as number[], bk: [] as number[] };
        try {
          for (let r = 0; r <= rounds; r++) {
            if (c === 'changed' && w.changeFile)
              await writeFile(join(ctx, w.changeFile), `changed ${++edits} ${Date.now()}\n`);
            const k = await timedRun(kilnBin, kilnArgs(c), { env: kilnEnv });
            if (kilnEnv.KILN_WARM_CLIENT !== '0') await warmClientLoaded(warmDir);
            const b = await timedRun(buildctl, bkArgs(c));
            if (r === 0) {
              if (!checked) {
                await sameRootfs(w, out.kiln, out.bk);
                checked = true;
              }
              continue;
            }
            times.kiln.push(k);
            times.bk.push(b);
          }
        } catch (err) {
          // Reported and marked in the table; the other workloads still run.
          failures++;
          const different = err instanceof DifferentOutputError;
          console.error(`  ${w.name} ${c}: ${err instanceof Error ? err.message : String(err)}`);
          rows.push([
            `${w.name}: ${w.title}`,
            caseName,
            '',
            '',
            '',
            target,
            different ? 'different output' : 'failed',
          ]);
          if (different) break;
          continue;
        }
        const km = median(times.kiln) / 1000;
        const bm = median(times.bk) / 1000;
        const ratio = km / bm;
        rows.push([
          `${w.name}: ${w.title}`,
          caseName,
          km,
          bm,
          `${ratio.toFixed(2)}x`,
          target,
          ratio > t.max ? 'NO' : t.stretch && ratio > t.stretch ? 'yes (not stretch)' : 'yes',
        ]);
        console.log(
          `  ${w.name} ${c}: kiln ${times.kiln.map((x) => (x / 1000).toFixed(2)).join(' ')} s; ` +
            `buildkit ${times.bk.map((x) => (x / 1000).toFixed(2)).join(' ')} s`,
        );
      }
    }
    printTable(
      `kiln build vs buildctl build (BuildKit v0.11.6), wall time of the client process, ` +
        `median of ${rounds} interleaved rounds after 1 warm-up; OCI tarball output`,
      ['workload', 'case', 'kiln median s', 'buildkit median s', 'ratio', 'target', 'ok'],
      rows,
    );
    console.log(`\nload average ${load()} at end`);
    if (failures) {
      console.error(`${failures} case(s) failed (above)`);
      process.exitCode = 1;
    }
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    await cleanup();
  }
}

class DifferentOutputError extends Error {}

/** Pids of the warm clients waiting in `dir` (their sockets are named `...-<pid>.sock`). */
function warmPids(dir: string): number[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .map((n) => Number(/-(\d+)\.sock$/.exec(n)?.[1]))
    .filter((pid) => pid > 0);
}

/** user + system CPU ticks of a process, or undefined once it is gone. */
function cpuTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]);
  } catch {
    return undefined;
  }
}

/**
 * Waits until a warm client waits in `dir` and every waiting one has stopped using CPU (the same
 * ticks over 100 ms): loaded. Bounded (5 s): a machine too busy to settle is not waited for.
 */
async function warmClientLoaded(dir: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  const pause = (): Promise<void> => new Promise((r) => setTimeout(r, 25));
  while (warmPids(dir).length === 0 && Date.now() < deadline) await pause();
  let last = '';
  let still = 0;
  while (still < 4 && Date.now() < deadline) {
    const now = warmPids(dir)
      .map((pid) => `${pid}:${cpuTicks(pid) ?? 'gone'}`)
      .join(',');
    still = now === last ? still + 1 : 0;
    last = now;
    await pause();
  }
}

/** Fails unless both images hold the same files (paths, types, contents, link targets). */
async function sameRootfs(w: Workload, kilnTar: string, bkTar: string): Promise<void> {
  const d = diffRootfs(await ociRootfs(kilnTar), await ociRootfs(bkTar), ['kiln', 'buildkit']);
  if (d.content.length)
    throw new DifferentOutputError(
      `workload ${w.name}: kiln and buildkit built different root filesystems:\n` +
        d.content.slice(0, 20).join('\n'),
    );
  const notes = [
    ...(d.stubs.length ? [`empty mount points on one side: ${d.stubs.join(', ')}`] : []),
    ...(d.metadata.length
      ? [`${d.metadata.length} mode/owner difference(s), e.g. ${d.metadata.slice(0, 3).join('; ')}`]
      : []),
  ];
  console.log(`  ${w.name}: same files from both${notes.length ? ` (${notes.join('; ')})` : ''}`);
}
