// DiskUsage and Prune through the control API, against a real worker process (bundled from the
// worker's entry, real crun and overlay snapshots, the harness's fixture image and nats-server):
// prune frees what it reports (du before and after), and a result pruned from its holder is made
// again when a later build needs it (TASK_INPUT_LOST, the producer reruns).
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { FsBlobStore } from '@kiln/store';
import { KilnClient } from '@kiln/client';
import type { UsageRecord } from '@kiln/client';
import { LinuxAmd64, copy, image, marshal, parseDefinition, scratch } from '@kiln/llb';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher } from '../dispatch/index.js';
import type { ManagedProcess } from '@kiln/common';
import { makeTempDir, startNats } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';
import { bundleWorkerMain, spawnWorkerNode } from '../test-support/workers.js';
import { ControlServer } from './control-server.js';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
let nc: NatsConnection;
let dispatcher: Dispatcher;
let server: ControlServer;
let client: KilnClient;
let worker: ManagedProcess;

beforeAll(async () => {
  if (!fixture) throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through vitest');
  tmp = makeTempDir('scheduler-prune');
  const storeDir = join(tmp.dir, 'store');
  nats = await startNats();
  const main = await bundleWorkerMain(tmp.dir);
  nc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
  dispatcher = await Dispatcher.start({ nc, affinityDelayMs: 100, monitorIntervalMs: 100 });
  worker = await spawnWorkerNode(main, nats.url, {
    id: 'gc-w1',
    stateDir: join(tmp.dir, 'w1'),
    storeDir,
    env: {
      // Nothing is protected by age, and nothing is uploaded behind the builds' backs: a
      // pruned intermediate result exists nowhere else.
      KILN_WORKER_GC_GRACE: '0',
      KILN_WORKER_GC_INTERVAL: '1h',
      KILN_WORKER_WRITE_BEHIND_IDLE_MS: '3600000',
    },
    registered: (id) => dispatcher.liveWorkers().some((w) => w.id === id),
  });
  server = new ControlServer({
    dispatcher,
    store: new FsBlobStore({ root: storeDir }),
    sessionWaitMs: 2_000,
  });
  const port = await server.listen('127.0.0.1:0');
  client = await KilnClient.connect(`127.0.0.1:${port}`);
});

afterAll(async () => {
  client?.close();
  await server?.close();
  await worker?.stop(5_000);
  await dispatcher?.close();
  await nc?.close();
  await nats?.stop();
  tmp?.remove();
});

const total = (rs: UsageRecord[]): number => rs.reduce((n, r) => n + Number(r.size), 0);

describe('DiskUsage and Prune', () => {
  it(
    'prune frees what it reports, and a pruned result is made again when a build needs it',
    { timeout: 180_000 },
    async () => {
      const tag = randomUUID();
      const a = image(fixture)
        .run({ args: ['/bin/sh', '-c', `echo ${tag} > /a.txt`] })
        .root();
      // `b` copies from `a` onto scratch: `a`'s layers are not in `b`'s chain, so exporting `b`
      // uploads none of them; `a` lives only on its worker.
      const b = scratch().file(copy(a, '/a.txt', '/b.txt'));
      await client.solve({
        buildId: `prune-1-${tag}`,
        definition: marshal(b, { platform: LinuxAmd64 }),
      });

      const before = await client.diskUsage();
      expect(before.length).toBeGreaterThan(2);
      for (const r of before) expect(r.description).toMatch(/ on gc-w1$/);
      expect(before.some((r) => r.description.startsWith('result sha256:'))).toBe(true);
      await expect(client.diskUsage(['bogus~~x'])).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
      });

      const removed = await client.prune();
      expect(removed.length).toBeGreaterThan(0);
      expect(total(removed)).toBeGreaterThan(0);
      const after = await client.diskUsage();
      expect(total(after)).toBe(total(before) - total(removed));
      const gone = new Set(removed.map((r) => r.id));
      expect(after.filter((r) => gone.has(r.id))).toEqual([]);

      // A new step on `a`, whose result the scheduler's record still places on gc-w1: the worker
      // no longer has it, the task fails TASK_INPUT_LOST, `a` reruns and the build succeeds.
      const c = a
        .run({ args: ['/bin/sh', '-c', `grep -q ${tag} /a.txt && echo ok > /c.txt`] })
        .root();
      const res = await client.solve({
        buildId: `prune-2-${tag}`,
        definition: marshal(c, { platform: LinuxAmd64 }),
      });
      expect(res.exporterResponse['result.id']).toMatch(/^sha256:/);
      // `a` was answered from its record, then resolved again after the lost input: it completes
      // twice in the second build's status, and `c` starts twice.
      const aDigest = parseDefinition(marshal(a, { platform: LinuxAmd64 }).toProto()).result.digest;
      const vertexes = [];
      for await (const f of client.status(`prune-2-${tag}`)) vertexes.push(...f.vertexes);
      const aDone = vertexes.filter((v) => v.digest === aDigest && Number(v.completedUnixNano) > 0);
      expect(aDone.length).toBe(2);
      expect((await client.diskUsage()).length).toBeGreaterThan(0);
    },
  );
});
