// The sandbox of a RUN, end to end on a worker node: the farm's NATS server listening on every
// address of the host (as a default-bound one does), tasks through the scheduler's real
// Dispatcher, real crun on overlay snapshots, the fixture busybox image. No mocks.
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { execFile } from 'node:child_process';
import { chmod, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { LinuxAmd64, image, marshal, parseDefinition } from '@kiln/llb';
import type { State } from '@kiln/llb';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from './config.js';
import { WorkerNode, natsHosts } from './worker-node.js';
import { startDispatcher, submitGraph } from '../test-support/graphs.js';
import type { DispatcherLike } from '../test-support/graphs.js';
import { makeTempDir, startNats, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';

const execFileP = promisify(execFile);
const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
let nc: NatsConnection;
let d: DispatcherLike;
let node: WorkerNode;
let hostIp: string;
let web: Server;

const def = (st: State): Uint8Array => marshal(st, { platform: LinuxAmd64 }).toBytes();
const salt = (): string => Math.random().toString(36).slice(2);

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  tmp = makeTempDir('worker-sandbox');
  // As /var/lib/kiln would be: other users may traverse the parent of the state dir.
  await chmod(tmp.dir, 0o755);
  // The host's main address (not loopback, not a bridge of Kiln's).
  const addrs = (await execFileP('ip', ['-4', '-o', 'addr'])).stdout.split('\n');
  hostIp = addrs
    .filter((l) => !/ (lo|kiln\S*|vto\S*) /.test(l))
    .map((l) => /inet (\d+\.\d+\.\d+\.\d+)/.exec(l)?.[1])
    .find((a) => a !== undefined)!;
  expect(hostIp).toBeDefined();
  nats = await startNats({ args: ['-a', '0.0.0.0'] });
  nc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
  d = await startDispatcher(nc);
  web = createServer((_req, res) => res.end('hello from the host\n'));
  await new Promise<void>((resolve) => web.listen(0, '0.0.0.0', resolve));
  const config = loadConfig({
    argv: [
      ...['--id', 'sandboxed', '--state-dir', join(tmp.dir, 'sandboxed'), '--slots', '2'],
      ...['--log-level', 'silent', '--memory-limit', '64MiB', '--time-limit', '2m'],
    ],
    env: {
      // The worker reaches NATS at the host's address: that is the control plane to hide.
      KILN_NATS_URL: `nats://${hostIp}:${nats.port}`,
      KILN_STORE_DIR: join(tmp.dir, 'store'),
      KILN_WORKER_HEARTBEAT_MS: '250',
      KILN_WORKER_DRAIN_TIMEOUT_MS: '2000',
    },
  });
  node = await WorkerNode.start(config);
  await waitFor('the dispatcher to see the worker', () =>
    d.liveWorkers().some((w) => w.id === node.id),
  );
});

afterAll(async () => {
  await node?.drain();
  await new Promise((resolve) => web?.close(resolve));
  await d?.close();
  await nc?.close();
  await nats?.stop();
  tmp?.remove();
});

describe('the sandbox of a RUN on a worker', () => {
  it("cannot reach the host's NATS server nor a host service bound to 0.0.0.0; the build works", async () => {
    const natsPort = nats.port;
    const webPort = (web.address() as AddressInfo).port;
    // Each probe prints reached or refused; the step itself succeeds either way.
    const probe = (cmd: string): string => `if ${cmd}; then echo reached; else echo refused; fi`;
    const nc = (host: string): string =>
      probe(`busybox timeout 10 nc ${host} ${natsPort} </dev/null 2>/dev/null | grep -q INFO`);
    const wget = (host: string): string =>
      probe(`busybox timeout 10 wget -q -O /dev/null http://${host}:${webPort}/ 2>/dev/null`);
    const script = [nc('10.89.0.1'), nc(hostIp), wget('10.89.0.1'), wget(hostIp)].join('; ');
    const st = image(fixture)
      .run({ args: ['/bin/sh', '-c', `(${script}) > /probes`] })
      .root();
    const { result } = await submitGraph(d, def(st), { salt: salt(), place: () => node.id });
    const snap = node.runner.snapshotOf(result.outputs[0]?.resultId ?? '')!;
    const probes = await node.runner.engine.read(snap, (dir) =>
      readFile(join(dir, 'probes'), 'utf8'),
    );
    expect(probes.trim().split('\n')).toEqual(['refused', 'refused', 'refused', 'refused']);
  });

  it('fails a RUN past the memory limit with a typed error naming the limit and the vertex', async () => {
    const st = image(fixture)
      .run({ args: ['busybox', 'dd', 'if=/dev/zero', 'of=/dev/null', 'bs=256M', 'count=1'] })
      .root();
    const vertex = parseDefinition(def(st)).result.digest;
    const err = await submitGraph(d, def(st), { salt: salt(), place: () => node.id }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({
      code: 'TASK_LIMIT_EXCEEDED',
      details: { limit: 'memory', vertex, exitCode: 137 },
    });
    expect((err as Error).message).toContain(`vertex ${vertex}`);
    expect((err as Error).message).toContain('memory limit (64 MiB)');
  });
});

describe("the worker's state", () => {
  it('keeps a setuid file a build made out of reach of other local users', async () => {
    const state = join(tmp.dir, 'sandboxed');
    expect((await stat(state)).mode & 0o777).toBe(0o700);
    const st = image(fixture)
      .run({ args: ['/bin/sh', '-c', 'cp /bin/busybox /suid-busybox && chmod 4755 /suid-busybox'] })
      .root();
    await submitGraph(d, def(st), { salt: salt(), place: () => node.id });
    // Root finds it under the state dir, setuid; nobody can neither stat nor run it.
    const { stdout } = await execFileP('find', [state, '-name', 'suid-busybox', '-perm', '-4000']);
    const paths = stdout.trim().split('\n').filter(Boolean);
    expect(paths.length).toBeGreaterThan(0);
    const asNobody = (...args: string[]) =>
      execFileP('setpriv', [
        '--reuid=65534',
        '--regid=65534',
        '--clear-groups',
        '--',
        ...args,
      ]).then(
        (r) => `ok: ${r.stdout}`,
        (e: { stderr?: string }) => `failed: ${e.stderr ?? ''}`,
      );
    expect(await asNobody('id', '-u')).toBe('ok: 65534\n');
    for (const p of paths) {
      expect(await asNobody('stat', p)).toMatch(/^failed: .*Permission denied/);
      // through a shell: setpriv's own exec still has root's capabilities (it drops them at exec)
      expect(await asNobody('/bin/sh', '-c', `exec ${p} id -u`)).toMatch(
        /^failed: .*Permission denied/,
      );
    }
  });
});

describe('natsHosts', () => {
  it('lists the hosts of a NATS url, several servers included', () => {
    expect(natsHosts('nats://10.0.0.5:4222,tls://nats.example:4443, [::1]:4222')).toEqual([
      '10.0.0.5',
      'nats.example',
      '::1',
    ]);
  });
});
