/**
 * Chaos at scale (issue 16 item 6): builds of a mixed corpus on a farm of processes while a fault
 * injector kills workers (-9 and SIGTERM), restarts nats-server, kills a scheduler (-9) and stops
 * the S3 store for seconds.
 *
 * The farm: nats-server (JetStream, a store dir kept across restarts), s3rver (the content store,
 * its directory kept across restarts), a registry with the fixture busybox index, two schedulers
 * and `workers` worker processes (a quarter of them, at least one, `linux/arm64=emulated` through
 * qemu binfmt), all the built service entries (`dist/`) with their default timings. Each build is
 * `kiln build --addr A,B` as a user runs it (a new CLI process), writing `--output type=local`.
 *
 * The corpus: cases of `test/corpus/` that succeed without a secret or ssh agent, each given a
 * last `RUN sleep 1` that writes the build's `VARIANT` build-arg, so that every build has a RUN
 * of its own (one a fault can interrupt) and its own expected output.
 *
 * The same builds run twice on two fresh farms: once without faults (the baseline, its outputs
 * the reference), once under the injector. Reported: builds succeeded, outputs identical to the
 * baseline's (paths, types, modes, owners, contents, link targets; not times), build time p50/p99
 * against the baseline's, the delay from a worker's kill -9 until each task it held was claimed
 * again, and what is left once the farm has stopped: mounts under the run's dir, containers in
 * the workers' runtime state, network namespaces and veths of its workers' processes, task
 * records still `running`.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, lstatSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import {
  REPO_ROOT,
  freePort,
  makeTempDir,
  pushFixtures,
  spawnManaged,
  startNats,
  startRegistry,
  startS3,
  waitFor,
} from '@kiln/test';
import type { ManagedProcess, NatsServerHandle, S3ServerHandle } from '@kiln/test';
import { printTable } from './table.js';

const execFileP = promisify(execFile);
const kilnBin = join(REPO_ROOT, 'cli/bin/kiln.js');
const schedulerMain = join(REPO_ROOT, 'services/scheduler/dist/main.js');
const workerMain = join(REPO_ROOT, 'services/worker/dist/node/main.js');
const corpusDir = join(REPO_ROOT, 'test/corpus');
/** Where the bridge leases addresses (the worker's default). */
const IPAM_DIR = '/run/kiln/ipam';

export interface ChaosBenchOptions {
  /** Builds per run (default 100). */
  builds?: number;
  /** Worker processes (default 8). */
  workers?: number;
  /** Builds at once (default 4). */
  concurrency?: number;
}

interface LogLine {
  msg?: string;
  time?: number;
  pid?: number;
  [k: string]: unknown;
}

interface Proc {
  proc: ManagedProcess;
  lines: LogLine[];
  /** The service's own pid (from its first log line), not its guard's. */
  pid(): number | undefined;
}

function spawnService(name: string, file: string, args: string[], env: Record<string, string>) {
  const lines: LogLine[] = [];
  const proc = spawnManaged(process.execPath, [file, ...args], {
    name,
    env: { ...process.env, KILN_LOG_LEVEL: 'info', ...env },
    onLine: (line, stream) => {
      if (stream !== 'stdout' || !line.startsWith('{')) return;
      try {
        lines.push(JSON.parse(line) as LogLine);
      } catch {
        // a partial line of a killed process: nothing to read in it
      }
    },
  });
  return { proc, lines, pid: () => lines.find((l) => typeof l.pid === 'number')?.pid };
}

interface Case {
  name: string;
  dir: string;
  platform?: string;
  target?: string;
  buildArgs: Record<string, string>;
}

/** The corpus cases that build without a secret, an ssh agent or an expected error. */
function corpus(tmp: string): Case[] {
  const out: Case[] = [];
  for (const name of readdirSync(corpusDir).sort()) {
    const exp = JSON.parse(readFileSync(join(corpusDir, name, 'expect.json'), 'utf8')) as {
      error?: unknown;
      secrets?: unknown;
      ssh?: unknown;
      platform?: string;
      target?: string;
      buildArgs?: Record<string, string>;
      generate?: unknown;
    };
    if (exp.error !== undefined || exp.secrets !== undefined || exp.ssh !== undefined) continue;
    const src = join(corpusDir, name);
    // A case whose context the corpus test generates is not complete on disk.
    const dockerfile = readFileSync(join(src, 'Dockerfile'), 'utf8');
    if (/^COPY files /m.test(dockerfile) && !existsSync(join(src, 'files'))) continue;
    const dir = join(tmp, 'corpus', name);
    cpSync(src, dir, { recursive: true });
    // Every build's own RUN, last: the fault injector has work to interrupt in each build.
    writeFileSync(
      join(dir, 'Dockerfile'),
      `${dockerfile.trimEnd()}\nARG VARIANT\nRUN sleep 1 && echo "variant $VARIANT" > /tmp/variant.txt\n`,
    );
    out.push({
      name,
      dir,
      ...(exp.platform ? { platform: exp.platform } : {}),
      ...(exp.target ? { target: exp.target } : {}),
      buildArgs: exp.buildArgs ?? {},
    });
  }
  return out;
}

/** A digest of a directory tree: paths, types, modes, owners, contents, link targets. */
function treeDigest(root: string): string {
  const h = createHash('sha256');
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const p = rel === '' ? name : `${rel}/${name}`;
      const st = lstatSync(join(root, p));
      h.update(`${p}\0${st.mode}\0${st.uid}:${st.gid}\0`);
      if (st.isSymbolicLink()) h.update(readlinkSync(join(root, p)));
      else if (st.isFile()) h.update(readFileSync(join(root, p)));
      h.update('\n');
      if (st.isDirectory()) walk(p);
    }
  };
  walk('');
  return h.digest('hex');
}

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
}

interface BuildResult {
  ok: boolean;
  ms: number;
  tree?: string;
  error?: string;
}

interface Fault {
  kind: string;
  at: number;
  detail: string;
  error?: string;
}

interface Kill {
  at: number;
  /** Cache keys of the tasks the killed process had claimed and not reported. */
  held: string[];
}

interface RunResult {
  builds: BuildResult[];
  faults: Fault[];
  kills: Kill[];
  /** Every `task claimed` line of every worker process. */
  claims: LogLine[];
  leftovers: Leftovers;
  wallMs: number;
}

interface Leftovers {
  running: number;
  mounts: number;
  containers: number;
  netns: number;
  veths: number;
}

const netnsList = async (): Promise<Set<string>> =>
  new Set(
    (await execFileP('ip', ['netns', 'list']).catch(() => ({ stdout: '' }))).stdout
      .split('\n')
      .map((l) => l.split(' ')[0] ?? '')
      .filter((n) => n.startsWith('kiln-')),
  );

const vethList = async (): Promise<Set<string>> =>
  new Set(
    (
      await execFileP('ip', ['-o', 'link', 'show', 'type', 'veth']).catch(() => ({ stdout: '' }))
    ).stdout
      .split('\n')
      .map((l) => (l.split(': ')[1] ?? '').split('@')[0] ?? '')
      .filter((n) => n.startsWith('vk')),
  );

/** Namespace ids leased on the bridge by `pids` (`<pid> <id>` per lease file). */
function leasesOf(pids: ReadonlySet<number>): string[] {
  const ids: string[] = [];
  for (const sub of readdirSync(IPAM_DIR, { withFileTypes: true })) {
    if (!sub.isDirectory()) continue;
    for (const ip of readdirSync(join(IPAM_DIR, sub.name))) {
      const [pid, id] = readFileSync(join(IPAM_DIR, sub.name, ip), 'utf8')
        .trim()
        .split(' ');
      if (pids.has(Number(pid)) && id) ids.push(id);
    }
  }
  return ids;
}

const vethOf = (id: string): string =>
  `vk${createHash('sha256').update(id).digest('hex').slice(0, 12)}`;

async function runFarm(
  name: string,
  o: Required<ChaosBenchOptions> & { image: string; registry: string; cases: Case[] },
  faults: boolean,
  root: string,
): Promise<RunResult> {
  const dir = join(root, name);
  const natsPort = await freePort();
  const natsStore = join(dir, 'nats');
  const bus: { nats: NatsServerHandle } = {
    nats: await startNats({ port: natsPort, storeDir: natsStore }),
  };
  const s3Dir = join(dir, 's3');
  const s3Port = await freePort();
  const store: { s3: S3ServerHandle | undefined } = {
    s3: await startS3({ port: s3Port, directory: s3Dir }),
  };
  const s3 = store.s3!;
  const common: Record<string, string> = {
    KILN_NATS_URL: bus.nats.url,
    KILN_S3_ENDPOINT: s3.endpoint,
    KILN_S3_BUCKET: s3.bucket,
    KILN_S3_ACCESS_KEY: s3.accessKey,
    KILN_S3_SECRET_KEY: s3.secretKey,
    KILN_INSECURE_REGISTRIES: o.registry,
  };
  const schedulerPorts = [await freePort(), await freePort()];
  const schedulers: (Proc | undefined)[] = [];
  const schedulerIncarnations: Proc[] = [];
  const startScheduler = async (i: number): Promise<Proc> => {
    const s = spawnService(`scheduler ${i}`, schedulerMain, [], {
      ...common,
      KILN_SCHEDULER_LISTEN: `127.0.0.1:${schedulerPorts[i]!}`,
    });
    schedulers[i] = s;
    schedulerIncarnations.push(s);
    await waitFor(
      `scheduler ${i} to listen`,
      () => s.lines.some((l) => l.msg === 'control api listening'),
      {
        timeoutMs: 60_000,
        abort: () => (s.proc.hasExited() ? `exited:\n${s.proc.output()}` : undefined),
      },
    );
    return s;
  };
  const ids = Array.from({ length: o.workers }, (_, i) => `w${i}`);
  const arm = new Set(ids.slice(0, Math.max(1, Math.floor(o.workers / 4))));
  const workers = new Map<string, Proc>();
  const incarnations: Proc[] = [];
  const startWorker = async (id: string): Promise<Proc> => {
    const w = spawnService(
      `worker ${id}`,
      workerMain,
      [
        '--id',
        id,
        '--state-dir',
        join(dir, 'workers', id),
        ...(arm.has(id) ? ['--platform', 'linux/arm64=emulated'] : []),
      ],
      { ...common, KILN_WORKER_DRAIN_TIMEOUT_MS: '15000' },
    );
    workers.set(id, w);
    incarnations.push(w);
    await waitFor(
      `worker ${id} to register`,
      () => w.lines.some((l) => l.msg === 'worker registered'),
      {
        timeoutMs: 120_000,
        abort: () => (w.proc.hasExited() ? `exited:\n${w.proc.output()}` : undefined),
      },
    );
    return w;
  };

  const faultLog: Fault[] = [];
  const kills: Kill[] = [];
  const t0 = performance.now();
  const results: BuildResult[] = [];
  try {
    await Promise.all([startScheduler(0), startScheduler(1)]);
    // Workers start a few at a time: 8 Node processes at once on 2 cores time out each other.
    for (let i = 0; i < ids.length; i += 2)
      await Promise.all(ids.slice(i, i + 2).map((id) => startWorker(id)));
    const addr = schedulerPorts.map((p) => `127.0.0.1:${p}`).join(',');

    let next = 0;
    let finished = 0;
    const build = async (i: number): Promise<BuildResult> => {
      const c = o.cases[i % o.cases.length]!;
      const out = join(dir, 'out', String(i));
      const args = [
        'build',
        c.dir,
        '--addr',
        addr,
        '--progress',
        'plain',
        '--build-arg',
        `BASE=${o.image}`,
        '--build-arg',
        `VARIANT=${i}`,
        '--output',
        `type=local,dest=${out}`,
        ...Object.entries(c.buildArgs).flatMap(([k, v]) => ['--build-arg', `${k}=${v}`]),
        ...(c.platform ? ['--platform', c.platform] : []),
        ...(c.target ? ['--target', c.target] : []),
      ];
      const start = performance.now();
      try {
        await execFileP(kilnBin, args, {
          env: { ...process.env, KILN_ADDR: '', KILN_STATE_DIR: join(dir, 'clients', String(i)) },
          maxBuffer: 64 << 20,
          // A build that hangs is a failure, not a stuck benchmark.
          timeout: 600_000,
          killSignal: 'SIGKILL',
        });
        return { ok: true, ms: performance.now() - start, tree: treeDigest(out) };
      } catch (err) {
        const e = err as Error & { stderr?: string; killed?: boolean };
        const tail = (e.stderr ?? e.message).trim().split('\n').slice(-3).join(' / ');
        return {
          ok: false,
          ms: performance.now() - start,
          error: `${c.name}#${i}: ${e.killed ? 'timed out (10 min): ' : ''}${tail}`,
        };
      }
    };
    const clients = Array.from({ length: o.concurrency }, async () => {
      for (let i = next++; i < o.builds; i = next++) {
        results[i] = await build(i);
        finished++;
        if (!results[i]!.ok) console.log(`  build failed: ${results[i]!.error}`);
      }
    });

    const injector = faults
      ? (async () => {
          const cycle = [
            'worker-kill',
            'nats-restart',
            'worker-term',
            'scheduler-kill',
            'worker-kill',
            'store-down',
          ] as const;
          let k = 0;
          let victim = 0;
          let schedulerKills = 0;
          while (finished < o.builds) {
            // Faults 4-8 s apart, so that the farm is mid-work at each.
            await sleep(4_000 + Math.random() * 4_000);
            if (finished >= o.builds) break;
            const kind = cycle[k++ % cycle.length]!;
            const fault: Fault = { kind, at: Date.now(), detail: '' };
            faultLog.push(fault);
            try {
              switch (kind) {
                case 'worker-kill':
                case 'worker-term': {
                  // The busiest worker (most tasks in flight), else the next in turn.
                  const inFlight = (w: Proc): LogLine[] => {
                    const reported = new Set(
                      w.lines
                        .filter((l) => l.msg === 'task reported' || l.msg === 'task handed back')
                        .map((l) => `${String(l.taskId)}/${String(l.attempt)}`),
                    );
                    return w.lines.filter(
                      (l) =>
                        l.msg === 'task claimed' &&
                        !reported.has(`${String(l.taskId)}/${String(l.attempt)}`),
                    );
                  };
                  // A kill that interrupts work: wait (a while) for a worker with a task.
                  const busiest = () =>
                    ids
                      .map((id) => ({ id, n: inFlight(workers.get(id)!).length }))
                      .sort((a, b) => b.n - a.n);
                  await waitFor('a worker with a task', () => busiest()[0]!.n > 0, {
                    timeoutMs: 10_000,
                    intervalMs: 100,
                  }).catch(() => undefined);
                  const busy = busiest();
                  const id = busy[0]!.n > 0 ? busy[0]!.id : ids[victim++ % ids.length]!;
                  const w = workers.get(id)!;
                  const held = inFlight(w).map((l) => String(l.cacheKey));
                  fault.detail = `${id} (${held.length} task(s) in flight)`;
                  if (kind === 'worker-kill') {
                    // The worker's own process, as the OOM killer would: its containers stay.
                    process.kill(w.pid()!, 'SIGKILL');
                    kills.push({ at: Date.now(), held });
                    await w.proc.exited;
                    await sleep(1_000);
                  } else {
                    await w.proc.stop(60_000);
                  }
                  await startWorker(id);
                  break;
                }
                case 'nats-restart': {
                  await bus.nats.stop();
                  bus.nats = await startNats({ port: natsPort, storeDir: natsStore });
                  break;
                }
                case 'scheduler-kill': {
                  const i = schedulerKills++ % 2;
                  const s = schedulers[i]!;
                  fault.detail = `scheduler ${i}`;
                  process.kill(s.pid()!, 'SIGKILL');
                  await s.proc.exited;
                  await sleep(1_000);
                  await startScheduler(i);
                  break;
                }
                case 'store-down': {
                  await store.s3!.stop();
                  store.s3 = undefined;
                  fault.detail = 's3rver stopped for 5 s';
                  await sleep(5_000);
                  store.s3 = await startS3({ port: s3Port, directory: s3Dir });
                  break;
                }
              }
            } catch (err) {
              fault.error = (err as Error).message.split('\n')[0];
              console.log(`  fault ${kind} failed: ${fault.error}`);
            }
          }
        })()
      : Promise.resolve();
    await Promise.all([...clients, injector]);
    const wallMs = performance.now() - t0;

    // Records still `running` once every build has ended (a little time to settle: a result
    // being reported as the last build ended).
    const nc = await connect({ servers: bus.nats.url, noAsyncTraces: true });
    let running = 0;
    try {
      const kv = await new Kvm(nc).open('kiln_tasks');
      const count = async (): Promise<number> => {
        let n = 0;
        for await (const key of await kv.keys()) {
          const e = await kv.get(key);
          if (!e || e.operation !== 'PUT') continue;
          if ((e.json<{ state?: string }>().state ?? '') === 'running') n++;
        }
        return n;
      };
      running = await waitFor('no task record running', async () => (await count()) === 0, {
        timeoutMs: 30_000,
        intervalMs: 1_000,
      }).then(
        () => 0,
        () => count(),
      );
    } finally {
      await nc.close();
    }

    // Stop the farm as an operator would (SIGTERM), then look for what it left.
    const pids = new Set(incarnations.map((w) => w.pid()).filter((p) => p !== undefined));
    for (const w of workers.values()) await w.proc.stop(60_000);
    for (const s of schedulers) await s?.proc.stop(15_000);
    const leftNetns = await netnsList();
    const leftVeths = await vethList();
    const leased = leasesOf(pids);
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((p) => p.startsWith(`${dir}/`)).length;
    let containers = 0;
    for (const id of ids)
      for (const rt of ['crun-state', 'runc-state']) {
        const d = join(dir, 'workers', id, 'exec', rt);
        if (existsSync(d)) containers += readdirSync(d).length;
      }
    return {
      builds: results,
      faults: faultLog,
      kills,
      claims: incarnations.flatMap((w) => w.lines.filter((l) => l.msg === 'task claimed')),
      leftovers: {
        running,
        mounts,
        containers,
        netns: leased.filter((id) => leftNetns.has(`kiln-${id}`)).length,
        veths: leased.filter((id) => leftVeths.has(vethOf(id))).length,
      },
      wallMs,
    };
  } finally {
    for (const w of workers.values()) await w.proc.stop(5_000);
    for (const s of schedulers) await s?.proc.stop(5_000);
    // Every service's log lines, for a failure to be read after the run.
    const logs = process.env.KILN_BENCH_CHAOS_LOGS;
    if (logs) {
      mkdirSync(join(logs, name), { recursive: true });
      const all = [...schedulerIncarnations, ...incarnations];
      all.forEach((p, i) =>
        writeFileSync(
          join(logs, name, `${String(i).padStart(3, '0')}-${p.proc.name.replace(/ /g, '-')}.jsonl`),
          p.lines.map((l) => JSON.stringify(l)).join('\n'),
        ),
      );
    }
    await store.s3?.stop();
    await bus.nats.stop();
  }
}

/** Per kill -9, per task it held: ms until the same cache key was claimed again (any worker). */
function rerunDelays(run: RunResult): { delays: number[]; notRerun: number } {
  const delays: number[] = [];
  let notRerun = 0;
  for (const k of run.kills)
    for (const key of k.held) {
      const again = run.claims
        .filter((c) => String(c.cacheKey) === key && (c.time ?? 0) >= k.at)
        .map((c) => c.time!)
        .sort((a, b) => a - b)[0];
      if (again === undefined) notRerun++;
      else delays.push(again - k.at);
    }
  return { delays, notRerun };
}

export async function runChaosBench(opts: ChaosBenchOptions = {}): Promise<void> {
  const o = { builds: 100, workers: 8, concurrency: 4, ...opts };
  if (!(o.builds >= 1 && o.workers >= 2 && o.concurrency >= 1))
    throw new Error('chaos: --builds >= 1, --workers >= 2');
  const tmp = makeTempDir('chaos-bench');
  const reg = await startRegistry();
  try {
    const { image } = await pushFixtures(reg.addr);
    const cases = corpus(tmp.dir);
    const load = (): string =>
      readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
    console.log(
      `chaos: ${o.builds} builds of ${cases.length} corpus cases (${cases.map((c) => c.name).join(', ')}), ` +
        `${o.workers} workers, ${o.concurrency} at once; load average ${load()}`,
    );
    const cfg = { ...o, image, registry: reg.addr, cases };
    const base = await runFarm('baseline', cfg, false, tmp.dir);
    console.log(`  baseline done in ${(base.wallMs / 1000).toFixed(0)} s; load average ${load()}`);
    const chaos = await runFarm('chaos', cfg, true, tmp.dir);
    console.log(`  chaos done in ${(chaos.wallMs / 1000).toFixed(0)} s; load average ${load()}`);

    const ok = (r: RunResult): number => r.builds.filter((b) => b.ok).length;
    const compared = chaos.builds.filter((b, i) => b.ok && base.builds[i]?.ok);
    const same = chaos.builds.filter(
      (b, i) => b.ok && base.builds[i]?.ok && b.tree === base.builds[i].tree,
    ).length;
    const times = (r: RunResult): number[] => r.builds.filter((b) => b.ok).map((b) => b.ms / 1000);
    const { delays, notRerun } = rerunDelays(chaos);
    const kinds = new Map<string, number>();
    for (const f of chaos.faults) kinds.set(f.kind, (kinds.get(f.kind) ?? 0) + 1);
    const failedFaults = chaos.faults.filter((f) => f.error !== undefined).length;
    const left = (l: Leftovers): string =>
      `${l.mounts} / ${l.containers} / ${l.netns} / ${l.veths} / ${l.running}`;
    const leftTotal = (l: Leftovers): number =>
      l.mounts + l.containers + l.netns + l.veths + l.running;
    const yes = (b: boolean): string => (b ? 'yes' : 'NO');
    const p = (xs: number[], q: number): string => percentile(xs, q).toFixed(1);
    printTable(
      `chaos: ${o.builds} builds, ${o.workers} workers (${Math.max(1, Math.floor(o.workers / 4))} emulated arm64), ` +
        `faults: ${[...kinds].map(([k, n]) => `${k} x${n}`).join(', ')}${failedFaults ? ` (${failedFaults} failed to inject)` : ''}`,
      ['measure', 'under faults', 'fault-free (same run)', 'ratio', 'goal', 'ok'],
      [
        [
          'builds succeeded',
          `${ok(chaos)}/${o.builds}`,
          `${ok(base)}/${o.builds}`,
          '-',
          '100%',
          yes(ok(chaos) === o.builds),
        ],
        [
          'outputs identical to fault-free',
          `${same}/${compared.length}`,
          '-',
          '-',
          'all',
          yes(same === compared.length && compared.length === o.builds),
        ],
        [
          'build time p50 / p99 (s)',
          `${p(times(chaos), 50)} / ${p(times(chaos), 99)}`,
          `${p(times(base), 50)} / ${p(times(base), 99)}`,
          `${(percentile(times(chaos), 50) / percentile(times(base), 50)).toFixed(2)}x`,
          '-',
          '-',
        ],
        [
          'wall time (s)',
          (chaos.wallMs / 1000).toFixed(0),
          (base.wallMs / 1000).toFixed(0),
          `${(chaos.wallMs / base.wallMs).toFixed(2)}x`,
          '-',
          '-',
        ],
        [
          `rerun delay after kill -9 p50 / p99 (s; ${delays.length} tasks, ${notRerun} not rerun)`,
          `${p(
            delays.map((d) => d / 1000),
            50,
          )} / ${p(
            delays.map((d) => d / 1000),
            99,
          )}`,
          '-',
          '-',
          'p99 <= 5 s',
          yes(delays.length > 0 && percentile(delays, 99) <= 5_000),
        ],
        [
          'left: mounts / containers / netns / veths / running records',
          left(chaos.leftovers),
          left(base.leftovers),
          '-',
          '0',
          yes(leftTotal(chaos.leftovers) === 0),
        ],
      ],
    );
    const failures = chaos.builds.filter((b) => !b.ok);
    for (const f of failures.slice(0, 10)) console.log(`  failed: ${f.error}`);
    for (const f of chaos.faults.filter((x) => x.error))
      console.log(`  fault ${f.kind}: ${f.error}`);
    if (failures.length > 0 || base.builds.some((b) => !b.ok)) process.exitCode = 1;
  } finally {
    await reg.stop();
    tmp.remove();
  }
}
