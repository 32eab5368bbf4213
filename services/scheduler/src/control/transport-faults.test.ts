// Broken connections between a client and its schedulers, with the real worker: two schedulers
// (ControlServer + Dispatcher each, in process) on one nats-server, one worker process (the
// worker service's own entry, real crun), a filesystem content store, and a TCP proxy in front of
// scheduler A whose connections the test cuts. The client names both (`A,B`). Every cut is made
// on a condition the test observes, never after a sleep.
import { randomUUID } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { FsBlobStore } from '@kiln/store';
import { KilnClient, dockerfileInput, solveAndReceive } from '@kiln/client';
import type { SolveRequest, SolveResult, StatusResponse } from '@kiln/client';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher } from '../dispatch/index.js';
import { registryMetaResolver } from '../registry-meta-resolver.js';
import { ControlServer } from './control-server.js';
import { TcpProxy } from '../test-support/control.js';
import { bundleWorkerMain, spawnWorkerNode } from '../test-support/workers.js';
import type { ManagedProcess } from '@kiln/common';
import { makeTempDir, startNats, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
const conns: NatsConnection[] = [];
const schedulers: { dispatcher: Dispatcher; server: ControlServer; port: number }[] = [];
let worker: ManagedProcess;

beforeAll(async () => {
  if (!fixture) throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through vitest');
  tmp = makeTempDir('transport-faults');
  const storeDir = join(tmp.dir, 'store');
  const [n, main] = await Promise.all([startNats(), bundleWorkerMain(tmp.dir)]);
  nats = n;
  for (let i = 0; i < 2; i++) {
    const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
    conns.push(nc);
    const dispatcher = await Dispatcher.start({ nc, affinityDelayMs: 0, monitorIntervalMs: 100 });
    const server = new ControlServer({
      dispatcher,
      metaResolver: registryMetaResolver(),
      store: new FsBlobStore({ root: storeDir }),
    });
    schedulers.push({ dispatcher, server, port: await server.listen('127.0.0.1:0') });
  }
  worker = await spawnWorkerNode(main, nats.url, {
    id: 'tf-w1',
    stateDir: join(tmp.dir, 'tf-w1'),
    storeDir,
    registered: (w) => schedulers.every((s) => s.dispatcher.liveWorkers().some((x) => x.id === w)),
  });
});

afterAll(async () => {
  for (const s of schedulers) await s.server.close();
  await worker?.stop(5_000);
  for (const s of schedulers) await s.dispatcher.close();
  await Promise.all(conns.map((c) => c.close()));
  await nats?.stop();
  tmp?.remove();
});

/** Collects what is written; `hold`: the first chunk's write never completes (a stuck disk). */
class Sink extends Writable {
  chunks: Buffer[] = [];
  constructor(readonly hold = false) {
    super();
  }
  override _write(c: Buffer, _e: BufferEncoding, cb: () => void): void {
    this.chunks.push(c);
    if (!(this.hold && this.chunks.length === 1)) cb();
  }
  get bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

async function collect(it: AsyncIterable<StatusResponse>): Promise<StatusResponse[]> {
  const out: StatusResponse[] = [];
  for await (const f of it) out.push(f);
  return out;
}

/** A client of scheduler A (through `proxy`) and B, moving to B when A's connection breaks. */
function connectAB(proxy: { port: number }): Promise<KilnClient> {
  return KilnClient.connect(`127.0.0.1:${proxy.port},127.0.0.1:${schedulers[1]!.port}`, {
    channelOptions: { 'grpc.initial_reconnect_backoff_ms': 50 },
  });
}

describe('a broken connection to the scheduler', () => {
  it('an export cut after the solve answered is solved again (every step cached) and received whole', async () => {
    const tag = randomUUID();
    // More than one export chunk (256 KiB) but little more: the first chunk is held by the
    // client's writer, and the rest still fits the connection's windows, so the scheduler sends
    // all of it and answers the Solve while the artifact is not yet written.
    const size = 265_000;
    const dockerfile = [
      `FROM ${fixture} AS gen`,
      `RUN yes ${tag} | head -c ${size} > /big.txt`,
      'FROM scratch',
      'COPY --from=gen /big.txt /big.txt',
    ].join('\n');
    const proxy = await TcpProxy.start(schedulers[0]!.port);
    const client = await connectAB(proxy);
    const sinks: Sink[] = [];
    const session = client.session({
      onExport: () => {
        const s = new Sink(sinks.length === 0);
        sinks.push(s);
        return s;
      },
    });
    const answered: string[] = [];
    // The real client, telling the test which solves it got an answer for.
    const observed = {
      solve: (r: SolveRequest, o: { signal?: AbortSignal }): Promise<SolveResult> =>
        client.solve(r, o).then((res) => {
          answered.push(r.buildId);
          return res;
        }),
    } as unknown as KilnClient;
    const buildId = `tf-exp-${tag}`;
    try {
      const done = solveAndReceive(observed, session, {
        buildId,
        sessionId: session.id,
        frontend: 'dockerfile.v0',
        attrs: { platform: 'linux/amd64' },
        inputs: { dockerfile: dockerfileInput(dockerfile) },
        exporters: [{ type: 'tar' }],
      });
      let failed: unknown;
      done.catch((e: unknown) => (failed = e));
      await waitFor(
        'the solve to answer while the artifact is held',
        () => (answered.includes(buildId) && sinks[0]?.chunks.length === 1 ? true : undefined),
        {
          timeoutMs: 180_000,
          abort: () =>
            failed === undefined
              ? undefined
              : `the build failed: ${failed instanceof Error ? failed.message : 'unknown'}`,
        },
      );
      expect(sinks[0]!.writableFinished).toBe(false);
      proxy.cut();
      const res = await done;
      expect(answered).toEqual([buildId, `${buildId}-r2`]);
      expect(res.exporterResponse['export.count']).toBe('1');
      expect(client.addr).toBe(`127.0.0.1:${schedulers[1]!.port}`);
      // The artifact came whole from the second solve.
      const last = sinks.at(-1)!;
      expect(sinks.length).toBe(2);
      const out = join(tmp.dir, `out-${tag}`);
      mkdirSync(out);
      execFileSync('tar', ['-x', '-C', out], { input: last.bytes });
      const big = readFileSync(join(out, 'big.txt'), 'utf8');
      expect(big.length).toBe(size);
      expect(big.startsWith(`${tag}\n${tag}\n`)).toBe(true);
      // Every step of the second solve came from the first's records.
      const frames = await collect(client.status(`${buildId}-r2`));
      const completed = frames
        .flatMap((f) => f.vertexes)
        .filter((v) => Number(v.completedUnixNano) > 0);
      expect(completed.length).toBeGreaterThanOrEqual(3);
      expect(completed.filter((v) => !v.cached).map((v) => v.name)).toEqual([]);
    } finally {
      session.close();
      client.close();
      await proxy.close();
    }
  });

  it('a build whose connection drops mid-RUN (the scheduler alive) is sent again over a new connection, its session reopened, and completes', async () => {
    const tag = randomUUID();
    const secret = `s-${tag}`;
    const dockerfile = [
      `FROM ${fixture} AS gen`,
      `RUN --mount=type=secret,id=tok test "$(cat /run/secrets/tok)" = "${secret}" && echo ${tag} > /out.txt`,
      'FROM scratch',
      'COPY --from=gen /out.txt /out.txt',
    ].join('\n');
    const proxy = await TcpProxy.start(schedulers[0]!.port);
    // One scheduler, reached through the proxy only: the calls come back to it.
    const client = await KilnClient.connect(`127.0.0.1:${proxy.port}`, {
      channelOptions: { 'grpc.initial_reconnect_backoff_ms': 50 },
    });
    let asked = 0;
    const sinks: Sink[] = [];
    const session = client.session({
      // The RUN asks for its secret once it runs: the first time, the connection drops then
      // (the answer is lost with it).
      secrets: (id) => {
        asked++;
        if (asked === 1) proxy.cut();
        return Promise.resolve(id === 'tok' ? Buffer.from(secret) : undefined);
      },
      onExport: () => {
        const s = new Sink();
        sinks.push(s);
        return s;
      },
    });
    const buildId = `tf-run-${tag}`;
    try {
      const res = await solveAndReceive(client, session, {
        buildId,
        sessionId: session.id,
        frontend: 'dockerfile.v0',
        attrs: { platform: 'linux/amd64' },
        inputs: { dockerfile: dockerfileInput(dockerfile) },
        exporters: [{ type: 'tar' }],
      });
      expect(asked).toBe(2);
      expect(proxy.connections).toBeGreaterThanOrEqual(2);
      expect(res.exporterResponse['export.count']).toBe('1');
      const out = join(tmp.dir, `out-${tag}`);
      mkdirSync(out);
      execFileSync('tar', ['-x', '-C', out], { input: sinks.at(-1)!.bytes });
      expect(readFileSync(join(out, 'out.txt'), 'utf8')).toBe(`${tag}\n`);
    } finally {
      session.close();
      client.close();
      await proxy.close();
    }
  });
});
