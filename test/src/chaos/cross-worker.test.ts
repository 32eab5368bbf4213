/**
 * Cross-worker builds through the control API, on real scheduler and worker processes (service
 * entries bundled from source), real crun containers and the harness's fixture busybox image:
 *
 * - a multi-stage graph whose stages run on different workers of a farm gives the same result
 *   (content-addressed: the same `result.id` and `result.layers`) as on a single-worker farm with
 *   a store and a bus of its own;
 * - platform routing: in one Definition, the arm64 vertices run only on the (emulated) arm64
 *   worker, the amd64 ones only on amd64 workers.
 */
import { join } from 'node:path';
import { KilnClient } from '@kiln/client';
import { LinuxAmd64, LinuxArm64, copy, image, marshal, parseDefinition } from '@kiln/llb';
import type { State } from '@kiln/llb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, natsAuthEnv, startNats } from '../harness/index.js';
import type { NatsServerHandle } from '../harness/index.js';
import {
  StatusLog,
  bundleEntries,
  layerListing,
  layersOf,
  readResultFile,
  startScheduler,
  startWorker,
  uid,
  waitForWorkers,
} from './farm.js';
import type { Entries, SchedulerProcess, WorkerProcess } from './farm.js';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';

interface Farm {
  nats: NatsServerHandle;
  scheduler: SchedulerProcess;
  workers: WorkerProcess[];
  client: KilnClient;
  storeDir: string;
}

let tmp: { dir: string; remove: () => void };
let entries: Entries;
/** Two amd64 workers with one slot each and an arm64 (emulated) worker. */
let farm: Farm;
/** One amd64 worker, its own bus and store. */
let single: Farm;

async function startFarm(name: string, specs: { id: string; args?: string[] }[]): Promise<Farm> {
  const dir = join(tmp.dir, name);
  const storeDir = join(dir, 'store');
  const nats = await startNats({ auth: { workers: specs.map((s) => s.id) } });
  const auth = nats.auth;
  if (!auth) throw new Error('nats-server started without auth');
  const scheduler = await startScheduler(entries, nats.url, { env: natsAuthEnv(auth.scheduler) });
  const workers = await Promise.all(
    specs.map((s) =>
      startWorker(entries, nats.url, {
        ...s,
        stateDir: join(dir, s.id),
        storeDir,
        env: natsAuthEnv(auth.workers[s.id]),
      }),
    ),
  );
  const client = await KilnClient.connect(scheduler.addr);
  await waitForWorkers(
    client,
    specs.map((s) => s.id),
  );
  return { nats, scheduler, workers, client, storeDir };
}

async function stopFarm(f: Farm | undefined): Promise<void> {
  if (!f) return;
  f.client.close();
  await f.scheduler.proc.stop(5_000);
  await Promise.all(f.workers.map((w) => w.proc.stop(10_000)));
  await f.nats.stop();
}

beforeAll(async () => {
  if (!fixture) throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through vitest');
  tmp = makeTempDir('chaos-cross');
  entries = await bundleEntries(tmp.dir);
  [farm, single] = await Promise.all([
    startFarm('farm', [
      { id: 'x-amd-1', args: ['--platform', 'linux/amd64', '--slots', '1'] },
      { id: 'x-amd-2', args: ['--platform', 'linux/amd64', '--slots', '1'] },
      { id: 'x-arm', args: ['--platform', 'linux/arm64=emulated', '--slots', '1'] },
    ]),
    startFarm('single', [{ id: 's-amd', args: ['--platform', 'linux/amd64', '--slots', '2'] }]),
  ]);
});

afterAll(async () => {
  await Promise.allSettled([stopFarm(farm), stopFarm(single)]);
  tmp?.remove();
});

const FIXED_TIME = '2020-01-01 00:00:00';
const FIXED_DATE = new Date('2020-01-01T00:00:00Z');

const sh = (st: State, script: string): State => st.run({ args: ['/bin/sh', '-c', script] }).root();

describe('builds across workers', () => {
  it('a multi-stage build spread over workers equals the same build on one worker', async () => {
    // Layers keep mtimes (as BuildKit's do without SOURCE_DATE_EPOCH), so everything the graph
    // creates gets a fixed time: what the stages write and the files the copy creates. (The
    // fixture image has no /dev, /proc, /sys; the mount points the runtime creates for a RUN are
    // removed from its result again, so they need no pinning.)
    const base = image(fixture);
    // Two independent stages; each takes a second, so that with one slot per worker the second
    // is declined by the busy holder of the image and runs on the other worker.
    const stage = (name: string) =>
      sh(
        base,
        `mkdir /${name} && echo ${name} > /${name}/data.txt && ` +
          `touch -d '${FIXED_TIME}' /${name}/data.txt /${name} && sleep 1`,
      );
    const a = stage('alpha');
    const b = stage('beta');
    // Copied to the root: a directory the copy writes into would get the time of the write.
    const final = base.file(
      copy(a, '/alpha/data.txt', '/alpha.txt', {
        createDestPath: true,
        createdTime: FIXED_DATE,
      }).copy(b, '/beta/data.txt', '/beta.txt', {
        createDestPath: true,
        createdTime: FIXED_DATE,
      }),
    );
    const def = marshal(final, { platform: LinuxAmd64 });
    const digests = parseDefinition(def.toProto()).order;
    const tag = uid();

    const solveOn = async (f: Farm) => {
      const buildId = `xw-${tag}-${f === farm ? 'farm' : 'single'}`;
      const status = new StatusLog(f.client, buildId);
      const res = await f.client.solve({ buildId, definition: def });
      await status.done;
      return { res: res.exporterResponse, vertices: status.vertices() };
    };
    const [spread, alone] = await Promise.all([solveOn(farm), solveOn(single)]);

    // Vertices really ran on two workers of the farm (none came from a cache).
    const ran = [...spread.vertices.values()].filter((v) => digests.includes(v.digest));
    expect(ran).toHaveLength(digests.length);
    expect(ran.every((v) => !v.cached && v.error === '')).toBe(true);
    expect(new Set(ran.map((v) => v.workerId)).size).toBeGreaterThanOrEqual(2);
    expect([...alone.vertices.values()].every((v) => v.workerId === 's-amd')).toBe(true);

    for (const [f, r] of [
      [farm, spread.res],
      [single, alone.res],
    ] as const) {
      const layers = layersOf(r);
      expect(readResultFile(f.storeDir, layers, '/alpha.txt')).toBe('alpha\n');
      expect(readResultFile(f.storeDir, layers, '/beta.txt')).toBe('beta\n');
    }
    // What differs, readably, if anything does; then the content addresses.
    const listings = (f: Farm, r: Record<string, string>) =>
      layersOf(r).map((l) => layerListing(f.storeDir, l));
    expect(listings(farm, spread.res)).toEqual(listings(single, alone.res));
    expect(layersOf(spread.res)).toEqual(layersOf(alone.res));
    expect(spread.res['result.id']).toBe(alone.res['result.id']);
    // The stages too (answered from each farm's records: nothing runs again).
    for (const st of [a, b]) {
      const d = marshal(st, { platform: LinuxAmd64 });
      const [x, y] = await Promise.all(
        [farm, single].map((f) => f.client.solve({ buildId: `xw-${uid()}`, definition: d })),
      );
      expect(listings(farm, x!.exporterResponse)).toEqual(listings(single, y!.exporterResponse));
      expect(layersOf(x!.exporterResponse)).toEqual(layersOf(y!.exporterResponse));
    }
  });

  it('routes by platform: arm64 vertices on the arm64 worker, amd64 ones on amd64 workers', async () => {
    const tag = uid();
    const arch = (p: typeof LinuxAmd64) =>
      sh(image(fixture, { platform: p }), `echo ${tag}; uname -m | tee /arch-${p.architecture}`);
    const arm = arch(LinuxArm64);
    // One Definition: the amd64 stage takes the arm64 stage's file.
    const final = arch(LinuxAmd64).file(copy(arm, '/arch-arm64', '/arch-arm64'));
    const def = marshal(final, { platform: LinuxAmd64 });
    const g = parseDefinition(def.toProto());
    const buildId = `plat-${tag}`;
    const status = new StatusLog(farm.client, buildId);
    const res = await farm.client.solve({ buildId, definition: def });
    await status.done;

    const vertices = status.vertices();
    let execs = 0;
    for (const d of g.order) {
      const { op } = g.ops.get(d)!;
      const v = vertices.get(d);
      expect(v?.error).toBe('');
      if (op.platform?.Architecture === 'arm64') expect(v?.workerId).toBe('x-arm');
      else expect(['x-amd-1', 'x-amd-2']).toContain(v?.workerId);
      if (op.exec) {
        execs++;
        const machine = op.platform?.Architecture === 'arm64' ? 'aarch64' : 'x86_64';
        expect(status.logs(d)).toContain(`${machine}\n`);
      }
    }
    expect(execs).toBe(2);
    const layers = layersOf(res.exporterResponse);
    expect(readResultFile(farm.storeDir, layers, '/arch-amd64')).toBe('x86_64\n');
    expect(readResultFile(farm.storeDir, layers, '/arch-arm64')).toBe('aarch64\n');
  });
});
