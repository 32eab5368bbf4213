// The control API end to end: the client library -> gRPC -> ControlServer -> solver ->
// Dispatcher -> NATS (a real nats-server, fresh for this file) -> in-process workers (the
// worker's TaskConsumer running the test executor). Waits are on conditions, never on time.
import { randomUUID } from 'node:crypto';
import { dockerfileInput, KilnClient } from '@kiln/client';
import type { StatusResponse } from '@kiln/client';
import {
  TaskConsumer,
  checksumSubject,
  decodeChecksumRequest,
  encodeChecksumJson,
} from '@kiln/bus';
import {
  LinuxAmd64,
  LinuxArm64,
  copy,
  image,
  marshal,
  mkfile,
  parseDefinition,
  scratch,
} from '@kiln/llb';
import type { Definition } from '@kiln/llb';
import * as grpc from '@grpc/grpc-js';
import { KilnError, RESEND_HEADER, control, controlService } from '@kiln/protocol';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher } from '../dispatch/index.js';
import { ControlServer } from './control-server.js';
import { Gates, TcpProxy, testExecutor, testResultId } from '../test-support/control.js';
import type { Run } from '../test-support/control.js';
import { startNats, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';

let nats: NatsServerHandle;
let nc: NatsConnection;
let dispatcher: Dispatcher;
let server: ControlServer;
let port: number;
let client: KilnClient;
const conns: NatsConnection[] = [];
const workers: TaskConsumer[] = [];
const runs: Run[] = [];
const gates = new Gates();
const WORKERS = ['ctl-w1', 'ctl-w2'];
const ARM_WORKER = 'ctl-arm64';

beforeAll(async () => {
  nats = await startNats();
  nc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
  dispatcher = await Dispatcher.start({
    nc,
    affinityDelayMs: 100,
    heartbeatTimeoutMs: 3_000,
    monitorIntervalMs: 100,
  });
  for (const id of WORKERS) {
    const wnc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
    conns.push(wnc);
    const w = new TaskConsumer({
      nc: wnc,
      id,
      platforms: [{ os: 'linux', architecture: 'amd64', emulated: false }],
      labels: { pool: 'test' },
      slots: 4,
      runTask: testExecutor(id, runs, gates),
      heartbeatMs: 250,
    });
    await w.start();
    workers.push(w);
  }
  // One arm64 worker (the test executor does not care about the architecture): routing.
  const anc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
  conns.push(anc);
  const arm = new TaskConsumer({
    nc: anc,
    id: ARM_WORKER,
    platforms: [{ os: 'linux', architecture: 'arm64', emulated: false }],
    slots: 2,
    runTask: testExecutor(ARM_WORKER, runs, gates),
    heartbeatMs: 250,
  });
  await arm.start();
  workers.push(arm);
  await waitFor('the dispatcher to see the workers', () =>
    [...WORKERS, ARM_WORKER].every((id) => dispatcher.liveWorkers().some((w) => w.id === id)),
  );
  server = new ControlServer({
    dispatcher,
    pendingMs: 3_000,
    checksumTimeoutMs: 500,
    metaResolver: (ref) =>
      Promise.resolve({
        ref,
        digest: `sha256:${'ab'.repeat(32)}`,
        config: {
          architecture: 'amd64',
          os: 'linux',
          // WorkingDir set: the frontend currently requires it (BuildKit defaults to /).
          config: { Env: ['PATH=/bin', 'FROM_RESOLVER=yes'], Cmd: ['sh'], WorkingDir: '/' },
          rootfs: { type: 'layers', diff_ids: [] },
        },
      }),
  });
  port = await server.listen('127.0.0.1:0');
  client = await KilnClient.connect(`127.0.0.1:${port}`);
});

afterAll(async () => {
  client?.close();
  await server?.close();
  await Promise.all(workers.map((w) => w.close()));
  await dispatcher?.close();
  await Promise.all([...conns, nc].map((c) => c?.close()));
  await nats?.stop();
});

/** base image -> exec `first` -> exec `second`: three vertices, unique to `tag`. */
function chain(
  tag: string,
  first: string[],
  second: string[] = ['echo', 'second'],
): {
  def: Definition;
  digests: string[];
} {
  const base = image(`docker.io/library/busybox:${tag}`);
  const a = base.run({ args: first }).root();
  const b = a.run({ args: second }).root();
  const def = marshal(b);
  return { def, digests: parseDefinition(def.toProto()).order.slice() };
}

async function collect(it: AsyncIterable<StatusResponse>): Promise<StatusResponse[]> {
  const out: StatusResponse[] = [];
  for await (const f of it) out.push(f);
  return out;
}

const vertexes = (frames: StatusResponse[]) => frames.flatMap((f) => f.vertexes);
const started = (frames: StatusResponse[], digest: string) =>
  vertexes(frames).some((v) => v.digest === digest && Number(v.startedUnixNano) > 0);

describe('Control API', () => {
  it('solves a 3-vertex Definition through the client and reports every vertex', async () => {
    const tag = randomUUID();
    const { def, digests } = chain(tag, ['echo', 'first']);
    const buildId = `b-${tag}`;
    const res = await client.solve({ buildId, definition: def });
    // The result is the last vertex's output, computed from its input chain.
    const [d0 = '', d1 = '', d2 = ''] = digests;
    const r0 = testResultId(d0, []);
    const r1 = testResultId(d1, [r0]);
    expect(res.exporterResponse['result.id']).toBe(testResultId(d2, [r1]));
    const layers = JSON.parse(res.exporterResponse['result.layers'] ?? '[]') as { size: number }[];
    expect(layers).toHaveLength(1);
    expect(WORKERS).toContain(res.exporterResponse['result.worker']);
    // Each vertex ran once, with its inputs resolved, preferring the holder of its input.
    const mine = runs.filter((r) => r.buildId === buildId);
    expect(mine.map((r) => r.vertex).sort()).toEqual([...digests].sort());
    const second = mine.find((r) => r.vertex === d2);
    expect(second?.inputs).toEqual([r1]);
    expect(second?.preferredWorker).toBe(mine.find((r) => r.vertex === d1)?.workerId);
    const frames = await collect(client.status(buildId));
    expect(frames.map((f) => Number(f.seq))).toEqual(frames.map((_, i) => i + 1));
    for (const d of digests) {
      const vs = vertexes(frames).filter((v) => v.digest === d);
      expect(vs.some((v) => Number(v.startedUnixNano) > 0)).toBe(true);
      expect(vs.some((v) => Number(v.completedUnixNano) > 0 && !v.error)).toBe(true);
    }
    const logs = frames
      .flatMap((f) => f.logs)
      .map((l) => Buffer.from(l.msg ?? new Uint8Array()).toString());
    expect(logs).toContain('run echo first\n');
  });

  it('resumes a status stream after the connection drops mid-build: every frame once, in order', async () => {
    const tag = randomUUID();
    const { def, digests } = chain(tag, ['gate', tag]);
    const buildId = `b-${tag}`;
    const proxy = await TcpProxy.start(port);
    const viaProxy = await KilnClient.connect(`127.0.0.1:${proxy.port}`, {
      channelOptions: { 'grpc.initial_reconnect_backoff_ms': 50 },
    });
    try {
      const solved = client.solve({ buildId, definition: def });
      const seen: StatusResponse[] = [];
      let cut = false;
      for await (const f of viaProxy.status(buildId)) {
        seen.push(f);
        if (!cut && started(seen, digests[1] ?? '')) {
          // Mid-build: the gated vertex runs. Drop the connection, then let the build go on.
          cut = true;
          proxy.cut();
          gates.open(tag);
        }
      }
      await solved;
      expect(cut).toBe(true);
      expect(proxy.connections).toBeGreaterThanOrEqual(2);
      const all = await collect(client.status(buildId));
      expect(seen.map((f) => Number(f.seq))).toEqual(all.map((_, i) => i + 1));
      expect(seen.map((f) => control.StatusResponse.encode(f).finish())).toEqual(
        all.map((f) => control.StatusResponse.encode(f).finish()),
      );
      // An explicit resume from a seq gets exactly the later frames.
      const later = await collect(client.status(buildId, 3));
      expect(later.map((f) => Number(f.seq))).toEqual(all.slice(3).map((f) => Number(f.seq)));
    } finally {
      viaProxy.close();
      await proxy.close();
    }
  });

  it.each([
    ['no session', false],
    ['a session (reopened over the new connection)', true],
  ])(
    'a solve whose connection drops mid-build (the scheduler alive) is sent again and completes: %s',
    async (_what, withSession) => {
      const tag = randomUUID();
      const { def, digests } = chain(tag, ['gate', tag]);
      const buildId = `b-${tag}`;
      const proxy = await TcpProxy.start(port);
      const viaProxy = await KilnClient.connect(`127.0.0.1:${proxy.port}`, {
        channelOptions: { 'grpc.initial_reconnect_backoff_ms': 50 },
      });
      const session = withSession ? viaProxy.session({}) : undefined;
      try {
        const solved = viaProxy.solve({
          buildId,
          definition: def,
          ...(session ? { sessionId: session.id } : {}),
        });
        solved.catch(() => undefined);
        for await (const f of client.status(buildId)) if (started([f], digests[1] ?? '')) break;
        // The scheduler sees its client's calls drop and cancels that build; the client opens
        // its session again (same id) and sends the Solve again (same ref), which starts it
        // afresh once the first has ended.
        proxy.cut();
        gates.open(tag);
        const res = await solved;
        const [d0 = '', d1 = '', d2 = ''] = digests;
        expect(res.exporterResponse['result.id']).toBe(
          testResultId(d2, [testResultId(d1, [testResultId(d0, [])])]),
        );
        expect(proxy.connections).toBeGreaterThanOrEqual(2);
      } finally {
        session?.close();
        viaProxy.close();
        await proxy.close();
      }
    },
  );

  it('a solve sent again after its build ended (the answer lost with the connection) runs afresh, every step CACHED', async () => {
    const tag = randomUUID();
    const { def, digests } = chain(tag, ['echo', tag]);
    const [d0 = '', d1 = '', d2 = ''] = digests;
    const buildId = `b-${tag}`;
    await client.solve({ buildId, definition: def });
    const execs = () => runs.filter((r) => r.buildId === buildId && r.args[0] === 'echo').length;
    const ran = execs();
    // The same id again, not a resend: taken, for good.
    const taken = await client.solve({ buildId, definition: def }).then(
      () => undefined,
      (e: unknown) => e as KilnError,
    );
    expect(taken?.code).toBe('BUILD_EXISTS');
    expect(taken?.retryable).toBe(false);
    // A resend (what the client sends when the first call broke before its answer arrived).
    const raw = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    try {
      const md = new grpc.Metadata();
      md.set(RESEND_HEADER, '1');
      const m = controlService.solve;
      const res = await new Promise<InstanceType<typeof control.SolveResponse>>((resolve, reject) =>
        raw.makeUnaryRequest(
          m.path,
          m.requestSerialize,
          m.responseDeserialize,
          control.SolveRequest.create({ ref: buildId, definition: def.toProto() }),
          md,
          (err, r) => (err || !r ? reject(err ?? new Error('no answer')) : resolve(r)),
        ),
      );
      expect(res.exporterResponse['result.id']).toBe(
        testResultId(d2, [testResultId(d1, [testResultId(d0, [])])]),
      );
    } finally {
      raw.close();
    }
    expect(execs()).toBe(ran);
    const frames = await collect(client.status(buildId));
    for (const d of [d1, d2])
      expect(
        vertexes(frames).some((v) => v.digest === d && v.cached && Number(v.completedUnixNano) > 0),
      ).toBe(true);
  });

  it('fails the build with the failing vertex digest and never dispatches its dependents', async () => {
    const tag = randomUUID();
    const { def, digests } = chain(tag, ['fail', tag]);
    const buildId = `b-${tag}`;
    const err = await client.solve({ buildId, definition: def }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(KilnError);
    const k = err as KilnError;
    expect(k.code).toBe('TEST_EXEC_FAILED');
    expect(k.details.digest).toBe(digests[1]);
    expect(k.message).toContain(`fail ${tag}`);
    const mine = runs.filter((r) => r.buildId === buildId).map((r) => r.vertex);
    expect(mine).toContain(digests[1]);
    expect(mine).not.toContain(digests[2]);
    const frames = await collect(client.status(buildId));
    expect(vertexes(frames).some((v) => v.digest === digests[1] && v.error)).toBe(true);
    expect(vertexes(frames).some((v) => v.digest === digests[2])).toBe(false);
  });

  it('runs each vertex once for two concurrent identical builds', async () => {
    const tag = randomUUID();
    const { def, digests } = chain(tag, ['gate', tag]);
    const [b1, b2] = [`b1-${tag}`, `b2-${tag}`];
    const s1 = client.solve({ buildId: b1, definition: def });
    const s2 = client.solve({ buildId: b2, definition: def });
    // Both builds wait for the gated vertex before it may finish.
    for (const b of [b1, b2]) {
      for await (const f of client.status(b)) {
        if (started([f], digests[1] ?? '')) break;
      }
    }
    gates.open(tag);
    const [r1, r2] = await Promise.all([s1, s2]);
    expect(r1.exporterResponse['result.id']).toBe(r2.exporterResponse['result.id']);
    // Vertices are unique to this test (its own image tag), so any run of them is from b1 or b2.
    // The image tag is a volatile source, resolved in every build; it resolves to the same result,
    // so everything after it runs once.
    const [source = '', ...rest] = digests;
    expect(
      runs
        .filter((r) => r.vertex === source)
        .map((r) => r.buildId)
        .sort(),
    ).toEqual([b1, b2]);
    for (const d of rest) expect(runs.filter((r) => r.vertex === d)).toHaveLength(1);
  });

  it('lists the registered workers', async () => {
    const ws = await client.listWorkers();
    for (const id of WORKERS) {
      const w = ws.find((x) => x.id === id);
      expect(w?.platforms.map((p) => `${p.OS}/${p.Architecture}`)).toEqual(['linux/amd64']);
      expect(w?.slots).toBe(4);
      expect(w?.labels.pool).toBe('test');
      expect(Number(w?.lastHeartbeatUnixNano)).toBeGreaterThan(0);
    }
    expect((await client.listWorkers([`id==${WORKERS[0] ?? ''}`])).map((w) => w.id)).toEqual([
      WORKERS[0],
    ]);
  });

  it('cancels a build: its running task stops, its dependents never run; a shared task goes on', async () => {
    const tag = randomUUID();
    const blocked = chain(tag, ['block', tag]);
    const buildId = `b-${tag}`;
    const solved = client.solve({ buildId, definition: blocked.def }).then(
      () => undefined,
      (e: unknown) => e as KilnError,
    );
    await waitFor('the blocking vertex to run', () =>
      runs.some((r) => r.buildId === buildId && r.vertex === blocked.digests[1]),
    );
    await client.cancel(buildId);
    expect((await solved)?.code).toBe('BUILD_CANCELED');
    await waitFor('the task to be aborted', () =>
      runs.some((r) => r.vertex === blocked.digests[1] && r.aborted),
    );
    expect(runs.some((r) => r.vertex === blocked.digests[2])).toBe(false);
    // Two builds share a gated vertex: cancelling one leaves it running for the other.
    const tag2 = randomUUID();
    const shared = chain(tag2, ['gate', tag2]);
    const [c1, c2] = [`c1-${tag2}`, `c2-${tag2}`];
    const s1 = client.solve({ buildId: c1, definition: shared.def }).catch((e: unknown) => e);
    const s2 = client.solve({ buildId: c2, definition: shared.def });
    for (const b of [c1, c2]) {
      for await (const f of client.status(b)) if (started([f], shared.digests[1] ?? '')) break;
    }
    await client.cancel(c1);
    expect(((await s1) as KilnError).code).toBe('BUILD_CANCELED');
    gates.open(tag2);
    const r2 = await s2;
    expect(r2.exporterResponse['result.id']).toBeTruthy();
    const sharedRun = runs.filter((r) => r.vertex === shared.digests[1]);
    expect(sharedRun).toHaveLength(1);
    expect(sharedRun[0]?.aborted).toBe(false);
  });

  it('solves a Dockerfile through the dockerfile.v0 frontend with the injected metaResolver', async () => {
    const tag = randomUUID();
    const buildId = `b-${tag}`;
    const dockerfile = `FROM busybox:${tag}\nRUN echo ${tag}\nENV AFTER=1\n`;
    const res = await client.solve({
      buildId,
      frontend: 'dockerfile.v0',
      attrs: { platform: 'linux/amd64' },
      inputs: { dockerfile: dockerfileInput(dockerfile) },
    });
    const config = JSON.parse(res.exporterResponse['containerimage.config'] ?? '{}') as {
      config?: { Env?: string[] };
    };
    expect(config.config?.Env).toEqual(expect.arrayContaining(['FROM_RESOLVER=yes', 'AFTER=1']));
    const mine = runs.filter((r) => r.buildId === buildId);
    expect(mine.some((r) => r.args.join(' ').includes(`echo ${tag}`))).toBe(true);
    expect(res.exporterResponse['result.platform']).toBe('linux/amd64');
    // A Dockerfile error is typed, with its line.
    const bad = await client
      .solve({
        buildId: `bad-${tag}`,
        frontend: 'dockerfile.v0',
        inputs: { dockerfile: dockerfileInput('FROM busybox\nNOPE x\n') },
      })
      .catch((e: unknown) => e as KilnError);
    expect(bad).toBeInstanceOf(KilnError);
    expect((bad as KilnError).code).toMatch(/^DOCKERFILE_/);
  });

  it('refuses the ARG doubling bomb typed, naming its line, without expanding it', async () => {
    // The 395-byte Dockerfile: 20 × ARG A=${A}${A} took the scheduler to 2.8 GB.
    const lines = ['FROM busybox', 'ARG A=0123456789abcdef'];
    for (let i = 0; i < 20; i++) lines.push('ARG A=${A}${A}');
    lines.push('RUN echo $A');
    const before = process.memoryUsage().rss;
    const err = await client
      .solve({
        buildId: `bomb-${randomUUID()}`,
        frontend: 'dockerfile.v0',
        inputs: { dockerfile: dockerfileInput(lines.join('\n')) },
      })
      .catch((e: unknown) => e as KilnError);
    expect(err).toBeInstanceOf(KilnError);
    expect((err as KilnError).code).toBe('DOCKERFILE_LIMIT_EXCEEDED');
    expect((err as KilnError).details).toMatchObject({ limit: 'maxWordLength', startLine: 19 });
    // Bounded: 2^20 copies of 16 bytes would be 16 MiB per word and gigabytes in all.
    expect(process.memoryUsage().rss - before).toBeLessThan(256 * 1024 * 1024);
  });

  it('refuses a Definition above maxDefinitionBytes typed, before parsing it', async () => {
    const big = image('docker.io/library/busybox:big')
      .run({ args: ['true'], customName: 'n'.repeat(17 * 1024 * 1024) })
      .root();
    const err = await client
      .solve({ buildId: `big-${randomUUID()}`, definition: marshal(big) })
      .catch((e: unknown) => e as KilnError);
    expect(err).toBeInstanceOf(KilnError);
    expect((err as KilnError).code).toBe('DEFINITION_TOO_LARGE');
    expect((err as KilnError).details.max).toBe(16 * 1024 * 1024);
  });

  it('runs a vertex with a 1 MB llb.customname, its name cut with a marker (no bus retry loop)', async () => {
    // The task once exceeded NATS's max payload: 60 s of retries, then DISPATCH_BUS_UNAVAILABLE.
    const tag = randomUUID();
    const buildId = `b-${tag}`;
    const st = image(`docker.io/library/busybox:${tag}`)
      .run({ args: ['echo', tag], customName: `${tag} ${'n'.repeat(1024 * 1024)}` })
      .root();
    const res = await client.solve({ buildId, definition: marshal(st) });
    expect(res.exporterResponse['result.id']).toBeTruthy();
    const names = vertexes(await collect(client.status(buildId))).map((v) => v.name ?? '');
    const long = names.filter((n) => n.startsWith(tag));
    expect(long.length).toBeGreaterThan(0);
    for (const n of long) {
      expect(n.length).toBeLessThanOrEqual(4096);
      expect(n).toMatch(/…\[\d+ characters truncated\]…/);
    }
  });

  it('fails a task too large for one bus message at once, typed, never as a bus outage', async () => {
    const tag = randomUUID();
    // Inline file data is part of the op (and of its digest): it cannot be cut.
    const st = scratch().file(mkfile(`/${tag}`, 0o644, 'd'.repeat(1100 * 1024)));
    const err = await client
      .solve({ buildId: `b-${tag}`, definition: marshal(st, { platform: LinuxAmd64 }) })
      .catch((e: unknown) => e as KilnError);
    expect(err).toBeInstanceOf(KilnError);
    expect((err as KilnError).code).toBe('DISPATCH_TASK_TOO_LARGE');
    expect((err as KilnError).details.max).toBeGreaterThan(0);
  });

  it('brings a 100 kB error message to the client, cut with a marker', async () => {
    const tag = randomUUID();
    const message = `${tag} ${'e'.repeat(100 * 1024)} the end`;
    const st = image(`docker.io/library/busybox:${tag}`)
      .run({ args: ['fail', message], customName: `fail ${tag}` })
      .root();
    const err = await client
      .solve({ buildId: `b-${tag}`, definition: marshal(st) })
      .catch((e: unknown) => e as KilnError);
    expect(err).toBeInstanceOf(KilnError);
    expect((err as KilnError).code).toBe('TEST_EXEC_FAILED');
    const got = (err as KilnError).message;
    // The step's name, the head and the tail of the message, and what was cut between them.
    expect(got.startsWith(`fail ${tag}: ${tag} eee`)).toBe(true);
    expect(got).toMatch(/e…\[\d+ characters truncated\]…e+ the end$/);
    expect(got.length).toBeLessThanOrEqual(4000);
    expect((err as KilnError).details.digest).toMatch(/^sha256:/);
  });

  it('cancels the build of a client that goes away mid-solve', async () => {
    const tag = randomUUID();
    const blocked = chain(tag, ['block', tag]);
    const buildId = `b-${tag}`;
    const ac = new AbortController();
    const solved = client.solve({ buildId, definition: blocked.def }, { signal: ac.signal }).then(
      () => undefined,
      (e: unknown) => e as KilnError,
    );
    await waitFor('the blocking vertex to run', () =>
      runs.some((r) => r.buildId === buildId && r.vertex === blocked.digests[1]),
    );
    ac.abort();
    expect((await solved)?.code).toBe('CANCELED');
    await waitFor('the task to be aborted', () =>
      runs.some((r) => r.vertex === blocked.digests[1] && r.aborted),
    );
    const frames = await collect(client.status(buildId));
    expect(vertexes(frames).some((v) => v.digest === blocked.digests[1] && v.error)).toBe(true);
    expect(runs.some((r) => r.vertex === blocked.digests[2])).toBe(false);
  });

  it('ends the status of a build that never starts with BUILD_NOT_FOUND', async () => {
    const err = await collect(client.status(`never-${randomUUID()}`)).catch(
      (e: unknown) => e as KilnError,
    );
    expect((err as KilnError).code).toBe('BUILD_NOT_FOUND');
  });

  it("names a Definition's build by its result's platform: an arm64 graph is an arm64 build", async () => {
    const tag = randomUUID();
    const st = image(`busybox:${tag}`, { platform: LinuxArm64 }).run({
      args: ['echo', tag],
    });
    const res = await client.solve({
      buildId: `arm-${tag}`,
      definition: marshal(st.root(), { platform: LinuxArm64 }),
    });
    expect(res.exporterResponse['result.platform']).toBe('linux/arm64');
    expect(res.exporterResponse['result.worker']).toBe(ARM_WORKER);
    const config = JSON.parse(res.exporterResponse['containerimage.config'] ?? '{}') as {
      architecture?: string;
    };
    expect(config.architecture).toBe('arm64');
  });

  it('solves a multi-platform Dockerfile: each platform on its own workers', async () => {
    const tag = randomUUID();
    const buildId = `mp-${tag}`;
    const res = await client.solve({
      buildId,
      frontend: 'dockerfile.v0',
      attrs: { platform: 'linux/amd64,linux/arm64' },
      inputs: { dockerfile: dockerfileInput(`FROM busybox:${tag}\nRUN echo ${tag}\n`) },
    });
    const platforms = JSON.parse(res.exporterResponse['result.platforms'] ?? '[]') as {
      platform: string;
      worker: string;
      id: string;
    }[];
    expect(platforms.map((p) => p.platform).sort()).toEqual(['linux/amd64', 'linux/arm64']);
    expect(platforms.find((p) => p.platform === 'linux/arm64')?.worker).toBe(ARM_WORKER);
    expect(WORKERS).toContain(platforms.find((p) => p.platform === 'linux/amd64')?.worker);
    const mine = runs.filter((r) => r.buildId === buildId);
    expect(mine.filter((r) => r.workerId === ARM_WORKER).length).toBeGreaterThan(0);
    expect(mine.filter((r) => r.workerId !== ARM_WORKER).length).toBeGreaterThan(0);
  });

  it('keys a COPY by the checksum its input holder answers, else by the result id; never fails for it', async () => {
    const tag = randomUUID();
    // The same COPY op reading /etc/conf of a different source image in each build: equal ops,
    // different input results (the test executor's result ids follow the vertex).
    const build = async (src: string) => {
      const from = image(`docker.io/library/${src}-${tag}:1`);
      const st = image(`docker.io/library/busybox:${tag}`).file(copy(from, '/etc/conf', '/conf'));
      const def = marshal(st);
      const copyDigest = parseDefinition(def.toProto()).result.digest;
      const buildId = `cs-${src}-${tag}`;
      await client.solve({ buildId, definition: def });
      const done = vertexes(await collect(client.status(buildId))).filter(
        (v) => v.digest === copyDigest && Number(v.completedUnixNano) > 0,
      );
      expect(done).toHaveLength(1);
      expect(done[0]?.error ?? '').toBe('');
      return { cached: done[0]?.cached, ran: runs.filter((r) => r.vertex === copyDigest).length };
    };
    const holders = (answer: (data: Uint8Array) => Uint8Array | undefined): Subscription[] =>
      WORKERS.map((id) =>
        nc.subscribe(checksumSubject(id), {
          callback: (err, msg) => {
            const reply = err ? undefined : answer(msg.data);
            if (reply) msg.respond(reply);
          },
        }),
      );
    const stop = async (subs: Subscription[]): Promise<void> => {
      for (const s of subs) s.unsubscribe();
      await nc.flush();
    };
    // 1. No worker answers checksums (the test workers have no responder): keyed by result ids,
    //    so each new source reruns the COPY, and the builds succeed.
    expect(await build('a')).toEqual({ cached: false, ran: 1 });
    expect(await build('b')).toEqual({ cached: false, ran: 1 });
    // 2. Holders that never answer: the solver gives up after its timeout, same outcome.
    const silent = holders(() => undefined);
    await nc.flush();
    try {
      expect(await build('c')).toEqual({ cached: false, ran: 1 });
    } finally {
      await stop(silent);
    }
    // 3. Holders that answer the same content for /etc/conf of every source: the COPY is keyed
    //    by that checksum, so a build from another source meets the first one's result.
    const asked: { resultId: string; selectors: string[] }[] = [];
    const answering = holders((data) => {
      const r = decodeChecksumRequest(data);
      asked.push({ resultId: r.resultId, selectors: r.deps.flatMap((d) => d.selectors) });
      return encodeChecksumJson({
        results: r.deps.map(() => ({ digest: `sha256:${'c'.repeat(64)}` })),
      });
    });
    await nc.flush();
    try {
      expect(await build('d')).toEqual({ cached: false, ran: 1 });
      expect(await build('e')).toEqual({ cached: true, ran: 0 });
    } finally {
      await stop(answering);
    }
    // Only the COPY's source input was asked about, through the selector it reads.
    expect(asked).toHaveLength(2);
    for (const a of asked) expect(a.selectors).toEqual(['/etc/conf']);
  });

  it('rejects a malformed Definition with a typed error', async () => {
    const err = await client
      .solve({ buildId: `bad-${randomUUID()}`, definition: { def: [new Uint8Array([1, 2, 3])] } })
      .catch((e: unknown) => e as KilnError);
    expect((err as KilnError).code).toMatch(/^LLB_/);
  });
});
