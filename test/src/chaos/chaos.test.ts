/**
 * Chaos through the control API: real scheduler and worker processes (service entries bundled
 * from source), real crun containers on the harness's fixture busybox image, a filesystem
 * content store shared by the workers, and a nats-server of each test's own (so that restarting
 * it disturbs no other suite). A process is killed, or the bus restarted, while a RUN is running;
 * the build's outcome is checked through `@kiln/client` and the layers in the store.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { KilnClient } from '@kiln/client';
import { LinuxAmd64, image, marshal, parseDefinition } from '@kiln/llb';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  bundleEntries as bundleFromSource,
  freePort,
  makeTempDir,
  natsAuthEnv,
  startNats,
  waitFor,
} from '../harness/index.js';
import type { NatsServerHandle } from '../harness/index.js';
import {
  StatusLog,
  bundleEntries,
  layersOf,
  readResultFile,
  startScheduler,
  startWorker,
  uid,
  waitForWorkers,
} from './farm.js';
import type { Entries, SchedulerProcess, WorkerProcess } from './farm.js';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';

let tmp: { dir: string; remove: () => void };
let entries: Entries;

// What each test started, stopped after it (workers drain, so their mounts are released).
let cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  if (!fixture) throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through vitest');
  tmp = makeTempDir('chaos');
  entries = await bundleEntries(tmp.dir);
});

afterEach(async () => {
  const errors: unknown[] = [];
  for (const c of cleanups.reverse()) await c().catch((e: unknown) => errors.push(e));
  cleanups = [];
  if (errors.length > 0) throw errors[0];
});

afterAll(() => {
  tmp?.remove();
});

interface Farm {
  readonly nats: NatsServerHandle;
  /** Stops nats-server and starts it again on the same port and store. */
  restartNats(): Promise<void>;
  scheduler: SchedulerProcess;
  workers: WorkerProcess[];
  client: KilnClient;
  storeDir: string;
  dir: string;
  /** `KILN_NATS_*` of the scheduler (no id) or of a worker. */
  env(workerId?: string): Record<string, string>;
}

/** nats-server, the scheduler and `ids.length` workers sharing one filesystem store. */
async function startFarm(
  ids: string[],
  schedulerPort?: number,
  workerArgs: string[] = [],
  schedulerEnv: Record<string, string> = {},
): Promise<Farm> {
  const dir = join(tmp.dir, uid());
  const storeDir = join(dir, 'store');
  // The bus's store dir is ours: kept across a restart of the server.
  const natsStore = join(dir, 'nats');
  // The farm's users and role permissions, as a deployed farm runs them.
  const bus = { nats: await startNats({ storeDir: natsStore, auth: { workers: ids } }) };
  cleanups.push(() => bus.nats.stop());
  const nats = bus.nats;
  const auth = nats.auth;
  if (!auth) throw new Error('nats-server started without auth');
  const scheduler = await startScheduler(entries, nats.url, {
    port: schedulerPort,
    // The workers' store: exporters' artifacts are read from it.
    env: { KILN_STORE_DIR: storeDir, ...natsAuthEnv(auth.scheduler), ...schedulerEnv },
  });
  cleanups.push(() => scheduler.proc.stop(5_000));
  const workers = await Promise.all(
    ids.map((id) =>
      startWorker(entries, nats.url, {
        id,
        stateDir: join(dir, id),
        storeDir,
        args: workerArgs,
        env: natsAuthEnv(auth.workers[id]),
      }),
    ),
  );
  for (const w of workers) cleanups.push(() => w.proc.stop(10_000));
  const client = await KilnClient.connect(scheduler.addr);
  cleanups.push(() => Promise.resolve(client.close()));
  await waitForWorkers(client, ids);
  return {
    get nats() {
      return bus.nats;
    },
    restartNats: async () => {
      const port = bus.nats.port;
      await bus.nats.stop();
      bus.nats = await startNats({ port, storeDir: natsStore, auth });
    },
    scheduler,
    workers,
    client,
    storeDir,
    dir,
    env: (id) => natsAuthEnv(id === undefined ? auth.scheduler : auth.workers[id]),
  };
}

/** image -> RUN that logs `started-<tag>`, sleeps `sleepS`, and writes `<tag>` to /out.txt. */
function slowRun(tag: string, sleepS: number) {
  const st = image(fixture)
    .run({
      args: ['/bin/sh', '-c', `echo started-${tag}; sleep ${sleepS}; echo ${tag} > /out.txt`],
    })
    .root();
  const def = marshal(st, { platform: LinuxAmd64 });
  const g = parseDefinition(def.toProto());
  const source = g.order.find((d) => g.ops.get(d)?.op.source);
  return { def, run: g.result.digest, source: source ?? '' };
}

/**
 * `vertex` ran once on the farm: one `task done`, one claim of its cache key (the worker logs
 * `task done` after its report, so the line may come just after the build's end).
 */
async function expectRanOnce(workers: readonly WorkerProcess[], vertex: string): Promise<void> {
  const runs = () =>
    workers.flatMap((w) =>
      w.lines.filter((l) => l.msg === 'task done' && l.vertexDigest === vertex),
    );
  await waitFor(`a worker to log ${vertex} done`, () => runs().length > 0);
  expect(runs(), vertex).toHaveLength(1);
  const claims = workers.flatMap((w) => w.claims());
  const key = claims.find((c) => c.taskId === runs()[0]?.taskId)?.cacheKey;
  expect(key).toBeDefined();
  expect(claims.filter((c) => c.cacheKey === key)).toHaveLength(1);
}

/** Mount points at or under `dir` (this process's mount namespace, the workers' too). */
function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p === dir || p.startsWith(`${dir}/`));
}

/** The bridge's address leases held by process `pid` (`/run/kiln/ipam/<subnet>/<ip>`: `<pid> <id>`). */
function bridgeLeases(pid: number): { id: string; file: string }[] {
  const root = '/run/kiln/ipam';
  const out: { id: string; file: string }[] = [];
  for (const subnet of existsSync(root) ? readdirSync(root) : [])
    for (const ip of readdirSync(join(root, subnet))) {
      const file = join(root, subnet, ip);
      const [owner, id] = readFileSync(file, 'utf8').trim().split(' ');
      if (Number(owner) === pid && id) out.push({ id, file });
    }
  return out;
}

/** The host side of namespace `id`'s veth pair (as the worker's bridge names it). */
const vethName = (id: string): string =>
  `vk${createHash('sha256').update(id).digest('hex').slice(0, 12)}`;

describe('chaos through the control API', () => {
  it('kill -9 of a worker mid-RUN, restarted at once with its id on its state dir: the build completes on it, nothing stale is left, its snapshots are used', async () => {
    // A dead worker is noticed by its heartbeat only after a minute here: the build must not
    // wait for that, nor for its queue message's redelivery.
    const farm = await startFarm(['again-a'], undefined, [], {
      KILN_HEARTBEAT_TIMEOUT_MS: '60000',
    });
    const [first] = farm.workers;
    const tag = uid();
    const { def, run } = slowRun(tag, 2);
    const buildId = `again-${tag}`;
    const status = new StatusLog(farm.client, buildId);
    const solved = farm.client.solve({ buildId, definition: def });
    solved.catch(() => undefined);
    await status.waitForLog(`started-${tag}`);
    first!.proc.kill('SIGKILL');
    await first!.proc.exited;
    // What the killed process left mounted: its RUN's root filesystem at least.
    expect(mountsUnder(first!.stateDir).length).toBeGreaterThan(0);
    // And, as a worker killed mid-COPY leaves it, a read-only view of a snapshot under tmp/.
    const view = join(first!.stateDir, 'tmp', 'mnt', 'm-dead');
    mkdirSync(view, { recursive: true });
    execFileSync('mount', ['--bind', '-o', 'ro', join(first!.stateDir, 'snapshots'), view]);
    cleanups.push(() => {
      if (mountsUnder(view).length > 0) execFileSync('umount', ['-l', view]);
      return Promise.resolve();
    });

    const back = await startWorker(entries, farm.nats.url, {
      id: first!.id,
      stateDir: first!.stateDir,
      storeDir: farm.storeDir,
      env: farm.env(first!.id),
    });
    cleanups.push(() => back.proc.stop(10_000));
    const res = await solved;
    expect(readResultFile(farm.storeDir, layersOf(res.exporterResponse), '/out.txt')).toBe(
      `${tag}\n`,
    );
    await status.done;
    expect(status.logs(run).filter((l) => l.includes(`started-${tag}`))).toHaveLength(2);
    // The new process ran the RUN on the image snapshot the killed one had unpacked.
    const done = back.lines.find((l) => l.msg === 'task done' && l.vertexDigest === run);
    expect(done).toMatchObject({ inputsFetched: 0, inputsLocal: 1 });
    // Nothing of the killed process is mounted any more (the new one holds no mount when idle).
    expect(mountsUnder(first!.stateDir)).toEqual([]);
  });

  it('kill -9 of a worker mid-RUN, restarted on its state dir with no work to do: its network namespaces, veths and mounts are gone at start', async () => {
    const farm = await startFarm(['netns-a']);
    const [first] = farm.workers;
    const pid = first!.lines.find((l) => typeof l.pid === 'number')?.pid as number;
    expect(pid).toBeGreaterThan(0);
    const tag = uid();
    const { def } = slowRun(tag, 30);
    const buildId = `netns-${tag}`;
    const status = new StatusLog(farm.client, buildId);
    const ac = new AbortController();
    const solved = farm.client.solve({ buildId, definition: def }, { signal: ac.signal });
    solved.catch(() => undefined);
    await status.waitForLog(`started-${tag}`);
    // The worker's own process, as the OOM killer does it: its container and crun stay.
    process.kill(pid, 'SIGKILL');
    await first!.proc.exited;
    // What it leased on the bridge: the RUN's namespace and the pool's (one per lease file).
    const leased = bridgeLeases(pid);
    expect(leased.length).toBeGreaterThan(0);
    const netns = () => execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    const links = () => execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });
    for (const l of leased) expect(netns()).toContain(`kiln-${l.id}`);
    expect(mountsUnder(first!.stateDir).length).toBeGreaterThan(0);
    // The build is cancelled: the restarted worker gets nothing to run (no runtime to open).
    ac.abort();
    await solved.catch(() => undefined);
    await status.done;

    const back = await startWorker(entries, farm.nats.url, {
      id: first!.id,
      stateDir: first!.stateDir,
      storeDir: farm.storeDir,
      env: farm.env(first!.id),
    });
    cleanups.push(() => back.proc.stop(10_000));
    for (const l of leased) {
      expect(netns()).not.toContain(`kiln-${l.id}`);
      expect(links()).not.toContain(`${vethName(l.id)}@`);
      expect(existsSync(l.file)).toBe(false);
    }
    expect(mountsUnder(first!.stateDir)).toEqual([]);
    expect(back.lines.some((l) => l.msg === 'task claimed')).toBe(false);

    // A RUN opens the sandbox network (its pool of namespaces); a graceful stop deletes them.
    await farm.client.solve({ buildId: `netns2-${tag}`, definition: slowRun(`${tag}b`, 0).def });
    const backPid = back.lines.find((l) => typeof l.pid === 'number')?.pid as number;
    const pooled = bridgeLeases(backPid);
    expect(pooled.length).toBeGreaterThan(0);
    await back.proc.stop(10_000);
    for (const l of pooled) {
      expect(netns()).not.toContain(`kiln-${l.id}`);
      expect(existsSync(l.file)).toBe(false);
    }
  });

  it('kill -9 of the worker running a RUN: the build succeeds through the other worker', async () => {
    const farm = await startFarm(['kill-a', 'kill-b']);
    const tag = uid();
    const { def, run, source } = slowRun(tag, 3);
    const buildId = `kill-${tag}`;
    const status = new StatusLog(farm.client, buildId);
    const solved = farm.client.solve({ buildId, definition: def });
    solved.catch(() => undefined);
    await status.waitForLog(`started-${tag}`);
    // The RUN's worker: the one with a claim in flight other than the image's (which ran before
    // the RUN was dispatched; its worker's log may lag behind the bus).
    const [victim, survivor] = await waitFor('the worker running the RUN', () => {
      const image = farm.workers
        .flatMap((w) => w.lines)
        .find((l) => l.msg === 'task done' && l.vertexDigest === source);
      if (!image) return undefined;
      const busy = farm.workers.filter((w) => w.inFlight().some((c) => c.taskId !== image.taskId));
      return busy.length === 1 ? [busy[0]!, farm.workers.find((w) => w !== busy[0])!] : undefined;
    });
    victim.proc.kill('SIGKILL');
    await victim.proc.exited;

    const res = await solved;
    expect(res.exporterResponse['result.worker']).toBe(survivor.id);
    expect(readResultFile(farm.storeDir, layersOf(res.exporterResponse), '/out.txt')).toBe(
      `${tag}\n`,
    );
    await status.done;
    const v = status.vertices().get(run);
    expect(v?.workerId).toBe(survivor.id);
    expect(v?.error).toBe('');
    // Both attempts ran: the killed one and the re-run.
    expect(status.logs(run).filter((l) => l.includes(`started-${tag}`))).toHaveLength(2);
    expect(victim.lines.some((l) => l.msg === 'task done' && l.vertexDigest === run)).toBe(false);
    expect(survivor.lines.some((l) => l.msg === 'task done' && l.vertexDigest === run)).toBe(true);

    // The dead worker comes back on its state dir (sweeping what the kill left) and serves.
    const back = await startWorker(entries, farm.nats.url, {
      id: victim.id,
      stateDir: victim.stateDir,
      storeDir: farm.storeDir,
      env: farm.env(victim.id),
    });
    cleanups.push(() => back.proc.stop(10_000));
  });

  it('a cached result whose holder died without uploading it: the vertex reruns, the build succeeds', async () => {
    // Write-behind far beyond the test: the holder never uploads on its own.
    const farm = await startFarm(['lost-a', 'lost-b'], undefined, [
      '--write-behind-idle-ms',
      '600000',
    ]);
    const tag = uid();
    const base = image(fixture);
    const run1 = base.run({ args: ['/bin/sh', '-c', `echo ran-${tag}; echo ${tag} > /a.txt`] });
    const first = marshal(
      run1
        .root()
        .run({ args: ['/bin/sh', '-c', 'cat /a.txt > /b.txt'] })
        .root(),
      { platform: LinuxAmd64 },
    );
    const run1Digest = parseDefinition(marshal(run1.root(), { platform: LinuxAmd64 }).toProto())
      .result.digest;
    const s1 = new StatusLog(farm.client, `lost1-${tag}`);
    await farm.client.solve({ buildId: `lost1-${tag}`, definition: first });
    await s1.done;
    // The holder of the intermediate RUN's result (never uploaded: nothing needed its blob).
    const holderId = s1.vertices().get(run1Digest)?.workerId;
    const victim = farm.workers.find((w) => w.id === holderId)!;
    const survivor = farm.workers.find((w) => w !== victim)!;
    victim.proc.kill('SIGKILL');
    await victim.proc.exited;

    // Another build on the same RUN: its record is a hit whose holder is gone.
    const second = marshal(
      run1
        .root()
        .run({ args: ['/bin/sh', '-c', 'cat /a.txt > /c.txt'] })
        .root(),
      { platform: LinuxAmd64 },
    );
    const s2 = new StatusLog(farm.client, `lost2-${tag}`);
    const res = await farm.client.solve({ buildId: `lost2-${tag}`, definition: second });
    await s2.done;
    expect(res.exporterResponse['result.worker']).toBe(survivor.id);
    expect(readResultFile(farm.storeDir, layersOf(res.exporterResponse), '/c.txt')).toBe(
      `${tag}\n`,
    );
    // The RUN ran again, on the survivor.
    const v = s2.vertices().get(run1Digest);
    expect(v?.workerId).toBe(survivor.id);
    expect(v?.error).toBe('');
    expect(s2.logs(run1Digest).some((l) => l.includes(`ran-${tag}`))).toBe(true);
  });

  it('an export whose input was never uploaded and whose holder died: solved again, exported', async () => {
    const farm = await startFarm(['lostx-a', 'lostx-b'], undefined, [
      '--write-behind-idle-ms',
      '600000',
    ]);
    const tag = uid();
    const def = marshal(
      image(fixture)
        .run({ args: ['/bin/sh', '-c', `echo ran-${tag}; echo ${tag} > /x.txt`] })
        .root(),
      { platform: LinuxAmd64 },
    );
    const run = parseDefinition(def.toProto()).result.digest;
    const exported: Buffer[] = [];
    const session = farm.client.session({
      onExport: () =>
        new Writable({
          write(c: Buffer, _e, cb) {
            exported.push(c);
            cb();
          },
        }),
    });
    cleanups.push(() => Promise.resolve(session.close()));
    // A tar export needs no blob: the RUN's result stays on its worker only.
    const s1 = new StatusLog(farm.client, `lostx1-${tag}`);
    await farm.client.solve({
      buildId: `lostx1-${tag}`,
      definition: def,
      sessionId: session.id,
      exporters: [{ type: 'tar' }],
    });
    await session.exportsWritten(1);
    await s1.done;
    const holderId = s1.vertices().get(run)?.workerId;
    const victim = farm.workers.find((w) => w.id === holderId)!;
    const survivor = farm.workers.find((w) => w !== victim)!;
    victim.proc.kill('SIGKILL');
    await victim.proc.exited;

    // The same graph exported as `local` (another export, so not a cache hit itself): its input
    // is a cached result whose holder is gone.
    exported.length = 0;
    const s2 = new StatusLog(farm.client, `lostx2-${tag}`);
    const res = await farm.client.solve({
      buildId: `lostx2-${tag}`,
      definition: def,
      sessionId: session.id,
      exporters: [{ type: 'local' }],
    });
    await session.exportsWritten(2);
    await s2.done;
    expect(res.exporterResponse['export.count']).toBe('1');
    expect(Buffer.concat(exported).includes(Buffer.from(`${tag}\n`))).toBe(true);
    // The first export found its input lost; the build solved again (making the blobs) and
    // exported that: the RUN ran again, on the survivor.
    await waitFor('the scheduler to log the lost export input', () =>
      farm.scheduler.lines.some((l) => l.msg === 'export input lost: solving again'),
    );
    expect(s2.vertices().get(run)?.workerId).toBe(survivor.id);
    expect(s2.logs(run).some((l) => l.includes(`ran-${tag}`))).toBe(true);
    expect(layersOf(res.exporterResponse).every((l) => l.digest !== '')).toBe(true);
  });

  it('nats-server restart mid-RUN: the build completes, the RUN ran once', async () => {
    const farm = await startFarm(['nrs-a', 'nrs-b']);
    const tag = uid();
    const { def, run } = slowRun(tag, 3);
    const buildId = `nrs-${tag}`;
    const status = new StatusLog(farm.client, buildId);
    const solved = farm.client.solve({ buildId, definition: def });
    solved.catch(() => undefined);
    await status.waitForLog(`started-${tag}`);
    await farm.restartNats();
    // (A guard on the test itself: the server was back before the RUN could have ended.)
    expect(status.vertices().get(run)?.completed).toBe(false);

    const res = await solved;
    expect(readResultFile(farm.storeDir, layersOf(res.exporterResponse), '/out.txt')).toBe(
      `${tag}\n`,
    );
    await status.done;
    expect(status.vertices().get(run)?.error).toBe('');
    // Nothing was re-dispatched because the bus was away: one claim of the RUN, on one worker.
    const runs = farm.workers.flatMap((w) =>
      w.lines.filter((l) => l.msg === 'task done' && l.vertexDigest === run),
    );
    expect(runs).toHaveLength(1);
    expect(status.logs(run).filter((l) => l.includes(`started-${tag}`))).toHaveLength(1);
    // And the farm still serves after the restart.
    const again = await farm.client.solve({ buildId: `nrs2-${tag}`, definition: def });
    expect(again.exporterResponse['result.id']).toBe(res.exporterResponse['result.id']);
  });

  it('scheduler killed mid-RUN, a second one running: the same solve completes through it, no finished RUN runs again', async () => {
    const farm = await startFarm(['srs-a', 'srs-b']);
    // A second scheduler of the same farm, already running.
    const s2 = await startScheduler(entries, farm.nats.url, {
      env: { KILN_STORE_DIR: farm.storeDir, ...farm.env() },
    });
    cleanups.push(() => s2.proc.stop(5_000));
    const client = await KilnClient.connect(`${farm.scheduler.addr},${s2.addr}`);
    cleanups.push(() => Promise.resolve(client.close()));
    expect(client.addr).toBe(farm.scheduler.addr);
    const tag = uid();
    // A first RUN that finishes before the kill, a second one the kill interrupts.
    const first = image(fixture).run({
      args: ['/bin/sh', '-c', `echo first-${tag}; echo ${tag} > /first.txt`],
    });
    const st = first
      .root()
      .run({
        args: ['/bin/sh', '-c', `echo second-${tag}; sleep 3; echo ${tag} > /second.txt`],
      })
      .root();
    const def = marshal(st, { platform: LinuxAmd64 });
    const g = parseDefinition(def.toProto());
    const second = g.result.digest;
    const firstRun = g.order.find((d) => d !== second && g.ops.get(d)?.op.exec) ?? '';
    expect(firstRun).not.toBe('');
    const buildId = `srs-${tag}`;
    const status = new StatusLog(client, buildId);
    const solved = client.solve({ buildId, definition: def });
    solved.catch(() => undefined);
    await status.waitForLog(`second-${tag}`);
    expect(status.vertices().get(firstRun)).toMatchObject({ completed: true, cached: false });
    farm.scheduler.proc.kill('SIGKILL');
    await farm.scheduler.proc.exited;

    // The client sends the same solve to the second scheduler, which adopts the build.
    const res = await solved;
    expect(client.addr).toBe(s2.addr);
    const layers = layersOf(res.exporterResponse);
    expect(readResultFile(farm.storeDir, layers, '/first.txt')).toBe(`${tag}\n`);
    expect(readResultFile(farm.storeDir, layers, '/second.txt')).toBe(`${tag}\n`);
    expect(s2.lines.some((l) => l.msg === 'build started' && l.buildId === buildId)).toBe(true);
    // The status stream followed: the end of the build came from the second scheduler.
    await status.done;
    const views = status.vertices();
    expect(views.get(firstRun)).toMatchObject({ completed: true, error: '' });
    expect(views.get(second)).toMatchObject({ completed: true, error: '' });
    // Each RUN ran once on the whole farm: the finished one was answered from its record, the
    // interrupted one was waited for, not started again.
    for (const [vertex, text] of [
      [firstRun, `first-${tag}`],
      [second, `second-${tag}`],
    ] as const) {
      await expectRanOnce(farm.workers, vertex);
      expect(status.logs().filter((l) => l.includes(text))).toHaveLength(1);
    }
  });

  it('scheduler stopped (SIGTERM) mid-RUN and started again on its port: the same solve completes, the RUN is not run again', async () => {
    const port = await freePort();
    const farm = await startFarm(['sts-a'], port);
    const tag = uid();
    const { def, run } = slowRun(tag, 3);
    const buildId = `sts-${tag}`;
    const status = new StatusLog(farm.client, buildId);
    const solved = farm.client.solve({ buildId, definition: def });
    solved.catch(() => undefined);
    await status.waitForLog(`started-${tag}`);
    farm.scheduler.proc.kill('SIGTERM');
    await farm.scheduler.proc.exited;
    const s2 = await startScheduler(entries, farm.nats.url, {
      port,
      env: { KILN_STORE_DIR: farm.storeDir, ...farm.env() },
    });
    cleanups.push(() => s2.proc.stop(5_000));

    const res = await solved;
    expect(readResultFile(farm.storeDir, layersOf(res.exporterResponse), '/out.txt')).toBe(
      `${tag}\n`,
    );
    await status.done;
    expect(status.vertices().get(run)).toMatchObject({ completed: true, error: '' });
    await expectRanOnce(farm.workers, run);
  });

  it('kiln build --addr A,B: A killed with -9 mid-RUN, the build completes through B, its context and export over a session reopened there, no finished RUN run again', async () => {
    const farm = await startFarm(['cli-a']);
    const s2 = await startScheduler(entries, farm.nats.url, {
      env: { KILN_STORE_DIR: farm.storeDir, ...farm.env() },
    });
    cleanups.push(() => s2.proc.stop(5_000));
    const kilnBin = (
      await bundleFromSource({ kiln: 'test/src/e2e/kiln-bin.ts' }, join(tmp.dir, 'kiln-bin'))
    ).kiln!;
    const tag = uid();
    const ctx = join(farm.dir, 'ctx');
    const dest = join(farm.dir, 'out');
    mkdirSync(ctx, { recursive: true });
    writeFileSync(join(ctx, 'input.txt'), `${tag}\n`);
    // The echoed words are split in the Dockerfile, so that only a RUN's output (not its name in
    // the progress) has them whole.
    writeFileSync(
      join(ctx, 'Dockerfile'),
      [
        'ARG BASE',
        'FROM ${BASE}',
        'COPY input.txt /input.txt',
        `RUN echo "fir""st-${tag}" && cp /input.txt /first.txt`,
        `RUN echo "sec""ond-${tag}" && sleep 3 && cp /input.txt /second.txt`,
        '',
      ].join('\n'),
    );
    const child = spawn(
      process.execPath,
      [
        kilnBin,
        'build',
        ctx,
        '--progress',
        'plain',
        '--build-arg',
        `BASE=${fixture}`,
        '--output',
        `type=local,dest=${dest}`,
        '--addr',
        `${farm.scheduler.addr},${s2.addr}`,
      ],
      { env: { ...process.env, KILN_STATE_DIR: join(farm.dir, 'kiln-state') }, stdio: 'pipe' },
    );
    cleanups.push(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      return Promise.resolve();
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    await waitFor('the second RUN to start', () => out.includes(`second-${tag}`), {
      abort: () => (child.exitCode !== null ? `kiln exited:\n${out}` : undefined),
    });
    farm.scheduler.proc.kill('SIGKILL');
    await farm.scheduler.proc.exited;

    expect(await exited, out).toBe(0);
    expect(s2.lines.some((l) => l.msg === 'build started')).toBe(true);
    expect(readFileSync(join(dest, 'first.txt'), 'utf8')).toBe(`${tag}\n`);
    expect(readFileSync(join(dest, 'second.txt'), 'utf8')).toBe(`${tag}\n`);
    // Each RUN's output once: neither ran again, and the progress did not repeat them.
    expect(out.split(`first-${tag}`)).toHaveLength(2);
    expect(out.split(`second-${tag}`)).toHaveLength(2);
    // No task claimed twice on the farm.
    const keys = farm.workers.flatMap((w) => w.claims()).map((c) => String(c.cacheKey));
    expect(new Set(keys).size).toBe(keys.length);
  });
});
