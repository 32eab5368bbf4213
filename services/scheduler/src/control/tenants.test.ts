// Tenants, tokens and entitlements end to end: the client library -> gRPC -> ControlServer with
// an Authenticator (two tenants' tokens) -> Dispatcher -> a real nats-server -> in-process
// workers (the worker's TaskConsumer with the test executor). Waits are on conditions.
import { randomBytes, randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { TaskConsumer } from '@kiln/bus';
import { KilnClient, dockerfileInput } from '@kiln/client';
import { NetMode, SecurityMode, image, marshal } from '@kiln/llb';
import type { Definition } from '@kiln/llb';
import {
  CLIENT_KEY_HEADER,
  KilnError,
  control,
  controlService,
  fromGrpcError,
} from '@kiln/protocol';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher } from '../dispatch/index.js';
import { startNats, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';
import { Authenticator, parseTokens } from './auth.js';
import { ControlServer } from './control-server.js';
import { Gates, testExecutor } from '../test-support/control.js';
import type { Run } from '../test-support/control.js';

const TOKEN_A = `a-${randomUUID()}`;
const TOKEN_B = `b-${randomUUID()}`;

let nats: NatsServerHandle;
let nc: NatsConnection;
let dispatcher: Dispatcher;
let server: ControlServer;
let addr: string;
let a: KilnClient;
let b: KilnClient;
const conns: NatsConnection[] = [];
const workers: TaskConsumer[] = [];
const runs: Run[] = [];
const gates = new Gates();

beforeAll(async () => {
  nats = await startNats();
  nc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
  dispatcher = await Dispatcher.start({ nc, affinityDelayMs: 0, monitorIntervalMs: 100 });
  const wnc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
  conns.push(wnc);
  const w = new TaskConsumer({
    nc: wnc,
    id: 'tenant-w1',
    platforms: [{ os: 'linux', architecture: 'amd64', emulated: false }],
    slots: 4,
    runTask: testExecutor('tenant-w1', runs, gates),
    heartbeatMs: 250,
  });
  await w.start();
  workers.push(w);
  await waitFor('the dispatcher to see the worker', () =>
    dispatcher.liveWorkers().some((x) => x.id === 'tenant-w1'),
  );
  server = new ControlServer({
    dispatcher,
    sessionWaitMs: 5_000,
    // team-b may use network.host (its entry in the tokens file); the farm allows nothing more.
    auth: new Authenticator({
      tokens: parseTokens(`team-a:${TOKEN_A}\nteam-b:${TOKEN_B} network.host`, 'test'),
      admins: ['team-a'],
    }),
    metaResolver: (ref) =>
      Promise.resolve({
        ref,
        digest: `sha256:${'cd'.repeat(32)}`,
        config: {
          architecture: 'amd64',
          os: 'linux',
          config: { Env: ['PATH=/bin'], WorkingDir: '/' },
          rootfs: { type: 'layers', diff_ids: [] },
        },
      }),
  });
  const port = await server.listen('127.0.0.1:0');
  addr = `127.0.0.1:${port}`;
  a = await KilnClient.connect(addr, { token: TOKEN_A });
  b = await KilnClient.connect(addr, { token: TOKEN_B });
});

afterAll(async () => {
  a?.close();
  b?.close();
  await server?.close();
  await Promise.all(workers.map((w) => w.close()));
  await dispatcher?.close();
  await Promise.all([...conns, nc].map((c) => c?.close()));
  await nats?.stop();
});

const rejection = async (p: Promise<unknown>): Promise<KilnError> => {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(KilnError);
  return e as KilnError;
};

function runDef(tag: string, o: { network?: NetMode; security?: SecurityMode } = {}): Definition {
  return marshal(
    image(`docker.io/library/busybox:${tag}`)
      .run({ args: ['echo', tag], ...o })
      .root(),
  );
}

describe("the farm's caches (kiln du, kiln prune)", () => {
  it("are an admin tenant's to see and prune: another tenant is refused", async () => {
    // The test executor keeps no cache (no worker answers GC requests here): nothing to list.
    expect(await a.diskUsage()).toEqual([]);
    expect(await a.prune()).toEqual([]);
    const du = await rejection(b.diskUsage());
    expect(du.code).toBe('PERMISSION_DENIED');
    expect(du.message).toMatch(/tenant team-b is not an admin of this farm/);
    expect((await rejection(b.prune())).code).toBe('PERMISSION_DENIED');
  });
});

describe('authentication', () => {
  it('rejects calls without a token or with a wrong one, on every method', async () => {
    const anon = await KilnClient.connect(addr);
    const wrong = await KilnClient.connect(addr, { token: `x-${randomUUID()}` });
    try {
      for (const c of [anon, wrong]) {
        const tag = randomUUID();
        const solve = await rejection(c.solve({ buildId: tag, definition: runDef(tag) }));
        expect(solve.code).toBe('UNAUTHENTICATED');
        expect((await rejection(c.listWorkers())).code).toBe('UNAUTHENTICATED');
        expect((await rejection(c.cancel(tag))).code).toBe('UNAUTHENTICATED');
        const status = await rejection(
          (async () => {
            for await (const _ of c.status(tag)) void _;
          })(),
        );
        expect(status.code).toBe('UNAUTHENTICATED');
        // Nothing ran for it.
        expect(runs.some((r) => r.buildId === tag)).toBe(false);
      }
      const msg = (await rejection(wrong.listWorkers())).message;
      expect(msg).not.toMatch(/team-/);
    } finally {
      anon.close();
      wrong.close();
    }
  });

  it('runs the build of a caller with a valid token', async () => {
    const tag = randomUUID();
    const res = await a.solve({ buildId: tag, definition: runDef(tag) });
    expect(res.exporterResponse['result.id']).toMatch(/^sha256:/);
    expect(runs.some((r) => r.buildId === tag)).toBe(true);
    expect((await a.listWorkers()).map((w) => w.id)).toContain('tenant-w1');
  });
});

describe('tenants', () => {
  it("answers BUILD_NOT_FOUND for another tenant's build on Status and Cancel", async () => {
    const tag = randomUUID();
    const solving = a.solve({
      buildId: tag,
      definition: marshal(
        image(`docker.io/library/busybox:${tag}`)
          .run({ args: ['gate', tag] })
          .root(),
      ),
    });
    const gated = (): Run | undefined =>
      runs.find((r) => r.buildId === tag && r.args[0] === 'gate');
    await waitFor('the gated task to run', gated);
    const status = await rejection(
      (async () => {
        for await (const _ of b.status(tag)) void _;
      })(),
    );
    expect(status.code).toBe('BUILD_NOT_FOUND');
    expect((await rejection(b.cancel(tag))).code).toBe('BUILD_NOT_FOUND');
    // The owner's build was not touched: it finishes once its gate opens.
    gates.open(tag);
    const res = await solving;
    expect(res.exporterResponse['result.id']).toMatch(/^sha256:/);
    expect(gated()?.aborted).toBe(false);
    // And its owner reads its status.
    const frames = [];
    for await (const f of a.status(tag)) frames.push(f);
    expect(frames.length).toBeGreaterThan(0);
  });

  it('keys the same op per tenant: neither gets the other one’s cached result', async () => {
    const tag = randomUUID();
    const def = runDef(tag);
    await a.solve({ buildId: `${tag}-a`, definition: def });
    await b.solve({ buildId: `${tag}-b`, definition: def });
    const ra = runs.filter((r) => r.buildId === `${tag}-a` && r.args[0] === 'echo');
    const rb = runs.filter((r) => r.buildId === `${tag}-b` && r.args[0] === 'echo');
    // Both ran it (no cache hit across tenants), under different keys.
    expect(ra).toHaveLength(1);
    expect(rb).toHaveLength(1);
    expect(ra[0]!.cacheKey).not.toBe(rb[0]!.cacheKey);
    // Within a tenant the cache works as before.
    await a.solve({ buildId: `${tag}-a2`, definition: def });
    expect(runs.some((r) => r.buildId === `${tag}-a2` && r.args[0] === 'echo')).toBe(false);
  });

  it("refuses a Solve naming another tenant's (or another connection's) session", async () => {
    const session = a.session({});
    // Its own connection: grpc-js would otherwise share one between clients of one process.
    const a2 = await KilnClient.connect(addr, {
      token: TOKEN_A,
      channelOptions: { 'grpc.use_local_subchannel_pool': 1 },
    });
    try {
      await waitFor('the session to open', () => server.sessions.get(session.id));
      for (const c of [b, a2]) {
        const tag = randomUUID();
        const err = await rejection(
          c.solve({ buildId: tag, sessionId: session.id, definition: runDef(tag) }),
        );
        expect(err.code).toBe('SESSION_NOT_FOUND');
        expect(runs.some((r) => r.buildId === tag)).toBe(false);
      }
      // Its own connection uses it.
      const tag = randomUUID();
      await a.solve({ buildId: tag, sessionId: session.id, definition: runDef(tag) });
      expect(runs.some((r) => r.buildId === tag)).toBe(true);
    } finally {
      session.close();
      a2.close();
    }
  });
});

/** Raw gRPC on a connection of its own, speaking as a client with `key` (CLIENT_KEY_HEADER). */
class RawClient {
  readonly ch = new grpc.Client(addr, grpc.credentials.createInsecure(), {
    'grpc.use_local_subchannel_pool': 1,
  });
  constructor(
    readonly token: string,
    readonly key?: string,
  ) {}

  #md(): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${this.token}`);
    if (this.key) md.set(CLIENT_KEY_HEADER, this.key);
    return md;
  }

  /** Opens session `id`; resolves with the stream, or rejects with the error that ended it. */
  session(id: string) {
    const m = controlService.session;
    const call = this.ch.makeBidiStreamRequest(
      m.path,
      m.requestSerialize,
      m.responseDeserialize,
      this.#md(),
    );
    const ended = new Promise((resolve) => {
      call.on('error', resolve);
      call.on('end', () => resolve(undefined));
    });
    call.on('data', () => undefined);
    call.write(control.SessionMessage.create({ hello: { sessionId: id } }));
    return Object.assign(call, { ended });
  }

  solve(buildId: string, sessionId: string): Promise<unknown> {
    const m = controlService.solve;
    const req = control.SolveRequest.create({
      ref: buildId,
      sessionId,
      definition: runDef(buildId).toProto(),
    });
    return new Promise((resolve, reject) =>
      this.ch.makeUnaryRequest(
        m.path,
        m.requestSerialize,
        m.responseDeserialize,
        req,
        this.#md(),
        (err, res) => (err ? reject(fromGrpcError(err)) : resolve(res)),
      ),
    );
  }
}

describe('sessions', () => {
  it('serve the client that opened them (its key) on any of its connections, and only it may reopen one', async () => {
    const key = randomBytes(24).toString('base64url');
    const other = randomBytes(24).toString('base64url');
    const id = randomUUID();
    const [c1, c2, c3, stranger, noKey, teamB] = [
      new RawClient(TOKEN_A, key),
      new RawClient(TOKEN_A, key),
      new RawClient(TOKEN_A, key),
      new RawClient(TOKEN_A, other),
      new RawClient(TOKEN_A),
      new RawClient(TOKEN_B, key),
    ];
    const streams: { cancel(): void }[] = [];
    try {
      const old = c1.session(id);
      streams.push(old);
      const first = await waitFor('the session to open', () => server.sessions.get(id));
      // Another connection of the same client: served.
      let tag = randomUUID();
      await c2.solve(tag, id);
      expect(runs.some((r) => r.buildId === tag)).toBe(true);
      // Another client of the tenant, a client without a key, another tenant: not found.
      for (const c of [stranger, noKey, teamB]) {
        tag = randomUUID();
        const err = await rejection(c.solve(tag, id));
        expect(err.code).toBe('SESSION_NOT_FOUND');
        expect(runs.some((r) => r.buildId === tag)).toBe(false);
      }
      // Only its client may open it again while it is open: the session goes on over the new
      // stream (the same session: a Solve that holds it is served), the old stream is ended.
      const refused = stranger.session(id);
      streams.push(refused);
      expect(String(await refused.ended)).toMatch(/already open/);
      expect(server.sessions.get(id)).toBe(first);
      streams.push(c2.session(id));
      expect(await old.ended).toBeUndefined();
      expect(server.sessions.get(id)).toBe(first);
      tag = randomUUID();
      await c3.solve(tag, id);
      expect(runs.some((r) => r.buildId === tag)).toBe(true);
    } finally {
      for (const s of streams) s.cancel();
      for (const c of [c1, c2, c3, stranger, noKey, teamB]) c.ch.close();
    }
  });
});

describe('entitlements', () => {
  it('refuses network.host unless asked for by the client and allowed for the tenant', async () => {
    const cases: [KilnClient, string[], RegExp][] = [
      [a, [], /needs entitlement network\.host: the build did not ask for it/],
      [a, ['network.host'], /does not allow it for tenant team-a/],
      [b, [], /needs entitlement network\.host: the build did not ask for it/],
    ];
    for (const [c, entitlements, want] of cases) {
      const tag = randomUUID();
      const err = await rejection(
        c.solve({
          buildId: tag,
          entitlements,
          definition: runDef(tag, { network: NetMode.HOST }),
        }),
      );
      expect(err.code).toBe('ENTITLEMENT_DENIED');
      expect(err.message).toMatch(want);
      expect(err.details.entitlement).toBe('network.host');
      expect(runs.some((r) => r.buildId === tag)).toBe(false);
    }
    // Asked for and allowed: it runs.
    const tag = randomUUID();
    await b.solve({
      buildId: tag,
      entitlements: ['network.host'],
      definition: runDef(tag, { network: NetMode.HOST }),
    });
    expect(runs.some((r) => r.buildId === tag && r.args[0] === 'echo')).toBe(true);
  });

  it('refuses security.insecure when no tenant is allowed it, even when asked for', async () => {
    for (const c of [a, b]) {
      const tag = randomUUID();
      const err = await rejection(
        c.solve({
          buildId: tag,
          entitlements: ['security.insecure'],
          definition: runDef(tag, { security: SecurityMode.INSECURE }),
        }),
      );
      expect(err.code).toBe('ENTITLEMENT_DENIED');
      expect(err.message).toMatch(/needs entitlement security\.insecure: the farm does not allow/);
      expect(runs.some((r) => r.buildId === tag)).toBe(false);
    }
    // Asked for but unused and not allowed: refused as buildkitd refuses it.
    const tag = randomUUID();
    const err = await rejection(
      a.solve({ buildId: tag, entitlements: ['security.insecure'], definition: runDef(tag) }),
    );
    expect(err.message).toMatch(/entitlement security\.insecure is not allowed by this farm/);
    // An unknown name is a request error.
    const bad = await rejection(
      a.solve({ buildId: randomUUID(), entitlements: ['root.please'], definition: runDef(tag) }),
    );
    expect(bad.code).toBe('SOLVE_REQUEST_INVALID');
  });

  it('names the Dockerfile instruction and its line', async () => {
    const tag = randomUUID();
    const err = await rejection(
      a.solve({
        buildId: tag,
        frontend: 'dockerfile.v0',
        inputs: {
          dockerfile: dockerfileInput(
            `FROM busybox:${tag}\nRUN echo ok\nRUN --security=insecure echo ${tag}\n`,
          ),
        },
      }),
    );
    expect(err.code).toBe('ENTITLEMENT_DENIED');
    expect(err.message).toMatch(/RUN --security=insecure echo .* \(line 3\) needs entitlement/);
    expect(err.details.sourceLines).toBe('3-3');
    expect(runs.some((r) => r.buildId === tag)).toBe(false);
  });
});
