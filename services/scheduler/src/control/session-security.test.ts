// Sessions on a farm of real processes with NATS credentials and the role permissions: a real
// nats-server with generated users, the scheduler (ControlServer + Dispatcher in process, the
// scheduler's user), a worker process (the worker service's own entry, bundled and run, with its
// worker user) running a Dockerfile with `RUN --mount=type=secret` through real crun, and the
// client library. A sniffer with the scheduler's permissive credentials listens to `>` for the
// whole build; a rogue client with another worker's credentials tries the build's session.
// Registry credentials: a real htpasswd docker-registry holds a private image; the client offers
// (or does not) the user's credentials through its session; the worker has credentials of its own
// in its docker config, which must never serve a build (the farm does not lend them).
import { createHash, randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LinuxAmd64, image, marshal } from '@kiln/llb';
import {
  connectNats,
  encodeSessionJson,
  getRecord,
  sessionKeyPair,
  sessionKeySubject,
  workerInboxPrefix,
  decodeSessionJson,
} from '@kiln/bus';
import type { SessionKeyReply, TaskRecord } from '@kiln/bus';
import { KilnClient, dockerfileInput } from '@kiln/client';
import type { ManagedProcess } from '@kiln/common';
import { FsBlobStore } from '@kiln/store';
import { makeTempDir, natsAuthEnv, startNats, startPrivateRegistry, waitFor } from '@kiln/testing';
import type { NatsServerHandle, RegistryHandle } from '@kiln/testing';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher } from '../dispatch/index.js';
import { registryMetaResolver } from '../registry-meta-resolver.js';
import { bundleWorkerMain, spawnWorkerNode } from '../test-support/workers.js';
import { ControlServer } from './control-server.js';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
let nc: NatsConnection;
let sniffer: NatsConnection;
let rogue: NatsConnection;
let dispatcher: Dispatcher;
let server: ControlServer;
let client: KilnClient;
let worker: ManagedProcess | undefined;
const sniffed: Buffer[] = [];
let registry: RegistryHandle;
let password = '';
const privateRef = (): string => `${registry.addr}/private/busybox:latest`;

beforeAll(async () => {
  if (!fixture) throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through vitest');
  tmp = makeTempDir('session-security');
  const storeDir = join(tmp.dir, 'store');
  const [n, main, reg] = await Promise.all([
    startNats({ auth: { workers: ['sec-w1', 'sec-rogue'] } }),
    bundleWorkerMain(tmp.dir),
    startPrivateRegistry(tmp.dir, fixture),
  ]);
  nats = n;
  registry = reg.registry;
  password = reg.password;
  // The worker's own docker config can pull and push there: a build must not borrow it.
  const workerHome = join(tmp.dir, 'worker-home');
  mkdirSync(join(workerHome, '.docker'), { recursive: true });
  writeFileSync(
    join(workerHome, '.docker', 'config.json'),
    JSON.stringify({
      auths: { [registry.addr]: { auth: Buffer.from(`docker:${password}`).toString('base64') } },
    }),
  );
  const auth = nats.auth;
  if (!auth) throw new Error('nats-server started without auth');
  nc = await connectNats(nats.url, auth.scheduler);
  sniffer = await connectNats(nats.url, auth.scheduler);
  sniffer.subscribe('>', {
    callback: (err, m) => void (err || sniffed.push(Buffer.from(m.data))),
  });
  await sniffer.flush();
  rogue = await connectNats(nats.url, {
    ...auth.workers['sec-rogue'],
    inboxPrefix: workerInboxPrefix('sec-rogue'),
  });
  dispatcher = await Dispatcher.start({ nc, affinityDelayMs: 100, monitorIntervalMs: 100 });
  worker = await spawnWorkerNode(main, nats.url, {
    id: 'sec-w1',
    stateDir: join(tmp.dir, 'sec-w1'),
    storeDir,
    env: { ...natsAuthEnv(auth.workers['sec-w1']), HOME: workerHome },
    registered: (id) => dispatcher.liveWorkers().some((x) => x.id === id),
  });
  server = new ControlServer({
    dispatcher,
    // As the scheduler's entry makes it by default: never its own docker config.
    metaResolver: registryMetaResolver({ dockerConfig: false }),
    store: new FsBlobStore({ root: storeDir }),
    sessionWaitMs: 5_000,
  });
  const port = await server.listen('127.0.0.1:0');
  client = await KilnClient.connect(`127.0.0.1:${port}`);
});

afterAll(async () => {
  client?.close();
  await server?.close();
  await worker?.stop(5_000);
  await dispatcher?.close();
  await Promise.all([rogue, sniffer, nc].map((c) => c?.close()));
  await nats?.stop();
  await registry?.stop();
  tmp?.remove();
});

/** Whether any message seen on the bus holds `needle`'s bytes, plain or base64 (either alphabet). */
function sniffedHas(needle: string): boolean {
  const b = Buffer.from(needle);
  const forms = [needle, b.toString('base64'), b.toString('base64url')];
  return sniffed.some((m) => forms.some((f) => m.includes(f)));
}

/** The running task records of `buildId`. */
async function runningOf(buildId: string): Promise<{ key: string; record: TaskRecord }[]> {
  const out: { key: string; record: TaskRecord }[] = [];
  for await (const key of await dispatcher.bus.tasks.keys()) {
    const r = (await getRecord(dispatcher.bus.tasks, key))?.record;
    if (r && r.state === 'running' && r.builds.includes(buildId)) out.push({ key, record: r });
  }
  return out;
}

describe('a --secret build on a farm with NATS credentials', () => {
  it('brings the secret to the RUN; the bus never carries it; a rogue worker gets nothing', async () => {
    const tag = randomUUID();
    const secret = `s3cret-${tag}`;
    const buildId = `sec-${tag}`;
    const gateValue = `gate-${randomUUID()}`;
    // The Dockerfile (which travels in the task) names the secret only by its digest.
    const digest = createHash('sha256').update(secret).digest('hex');
    // The RUN waits for a second secret, which the client gives only once the rogue has tried:
    // the task is claimed and running (its secret mounts are being made) while it tries.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let gateAsked = false;
    const session = client.session({
      secrets: async (id) => {
        if (id === 'tok') return Buffer.from(secret);
        if (id !== 'gate') return undefined;
        gateAsked = true;
        await gate;
        return Buffer.from(gateValue);
      },
    });
    try {
      const solved = client.solve({
        buildId,
        sessionId: session.id,
        frontend: 'dockerfile.v0',
        attrs: { platform: 'linux/amd64' },
        inputs: {
          dockerfile: dockerfileInput(
            [
              `FROM ${fixture}`,
              `RUN --mount=type=secret,id=gate --mount=type=secret,id=tok ` +
                `test "$(sha256sum < /run/secrets/tok | cut -d' ' -f1)" = ${digest} ` +
                `&& echo ${tag} > /ok.txt`,
            ].join('\n'),
          ),
        },
      });
      await waitFor('the RUN to ask for its gate secret', () => gateAsked, { timeoutMs: 120_000 });
      const [running] = await runningOf(buildId);
      if (!running) throw new Error('no running task of the build');
      expect(running.record.holder).toBe('sec-w1');
      // The session id is in the record for anyone to read; under its own id, with the running
      // task's key and token, the rogue is refused (it holds no claim on it).
      const sessionId = session.id;
      const ask = (workerId: string) =>
        rogue.request(
          sessionKeySubject(sessionId, workerId),
          encodeSessionJson({
            key: running.key,
            token: running.record.attemptToken,
            publicKey: sessionKeyPair().publicKey,
          }),
          { timeout: 5_000 },
        );
      const refused = decodeSessionJson<SessionKeyReply>((await ask('sec-rogue')).data);
      expect(refused).toMatchObject({ error: { code: 'SESSION_DENIED' } });
      // Under the holder's id, the server refuses the publish.
      await expect(ask('sec-w1')).rejects.toThrow(/permission/i);
      // The subject of old (the session id) answers nothing.
      await expect(
        rogue.request(`kiln.session.${sessionId}.secret`, encodeSessionJson({ id: 'tok' }), {
          timeout: 2_000,
        }),
      ).rejects.toThrow();
      // Nor may it listen to the sessions or the holder's inbox.
      for (const subject of ['kiln.session.>', `${workerInboxPrefix('sec-w1')}.>`]) {
        const sub = rogue.subscribe(subject);
        await rogue.flush().catch(() => undefined);
        const err = await waitFor(`the subscription to ${subject} to be refused`, () =>
          sub.isClosed() ? sub.closed.then((e) => e ?? 'closed') : undefined,
        );
        expect(String(err)).toMatch(/permission/i);
      }
      release();
      const res = await solved;
      expect(res.exporterResponse['result.worker']).toBe('sec-w1');
      await sniffer.flush();
      // The bus carried the build (task messages, records, sealed session traffic)...
      expect(sniffedHas(tag)).toBe(true);
      // ...but never the secret's bytes, in clear or base64.
      expect(sniffedHas(secret)).toBe(false);
      expect(sniffedHas(gateValue)).toBe(false);
    } finally {
      release?.();
      session.close();
    }
  });
});

describe('registry credentials from the client session', () => {
  const userAuth = (host: string) =>
    Promise.resolve(host === registry.addr ? { username: 'docker', secret: password } : undefined);

  /** Solves `o` with a session that offers the user's credentials (`withAuth`) or none. */
  async function solveWith(
    withAuth: boolean,
    o: Parameters<KilnClient['solve']>[0],
  ): Promise<Awaited<ReturnType<KilnClient['solve']>>> {
    const session = client.session(withAuth ? { registryAuth: userAuth } : {});
    try {
      return await client.solve({ ...o, sessionId: session.id });
    } finally {
      session.close();
    }
  }

  it("the worker pulls a private image only with the client's credentials, never its own", async () => {
    const tag = randomUUID();
    const def = marshal(
      image(privateRef())
        .run({ args: ['/bin/sh', '-c', `echo ${tag} > /pulled.txt`] })
        .root(),
      { platform: LinuxAmd64 },
    );
    // Without: anonymous (the worker's docker config could pull it, and is not used).
    const refused = await solveWith(false, { buildId: `pull-no-${tag}`, definition: def }).catch(
      (e: unknown) => e,
    );
    expect(refused).toMatchObject({ code: 'REGISTRY_AUTH' });
    expect(String((refused as Error).message)).toContain(registry.addr);
    // With the user's credentials, through the session.
    const res = await solveWith(true, { buildId: `pull-yes-${tag}`, definition: def });
    expect(res.exporterResponse['result.worker']).toBe('sec-w1');
  });

  it("a private FROM resolves and builds with the client's credentials, and fails clearly without", async () => {
    const tag = randomUUID();
    const dockerfile = dockerfileInput(
      [`FROM ${privateRef()}`, `RUN echo ${tag} > /from.txt`].join('\n'),
    );
    const o = {
      frontend: 'dockerfile.v0',
      attrs: { platform: 'linux/amd64' },
      inputs: { dockerfile },
    };
    const refused = await solveWith(false, { buildId: `from-no-${tag}`, ...o }).catch(
      (e: unknown) => e,
    );
    // The scheduler's resolution of the base image, as the caller: the Dockerfile's line 1 fails,
    // naming the image and why (the scheduler has no credentials of its own to fall back on).
    expect(refused).toMatchObject({ details: { startLine: 1 } });
    expect(String((refused as Error).message)).toContain(privateRef());
    expect(String((refused as Error).message)).toMatch(/requires basic auth and no credentials/);
    const res = await solveWith(true, { buildId: `from-yes-${tag}`, ...o });
    expect(res.exporterResponse['result.worker']).toBe('sec-w1');
  });

  it("a push uses the client's credentials; without them it fails, the worker's own unused", async () => {
    const tag = randomUUID();
    const name = `${registry.addr}/private/pushed:${tag.slice(0, 8)}`;
    const o = {
      definition: marshal(
        image(privateRef())
          .run({ args: ['/bin/sh', '-c', `echo ${tag} > /push.txt`] })
          .root(),
        { platform: LinuxAmd64 },
      ),
      exporters: [{ type: 'image', attrs: { name, push: 'true' } }],
    };
    // The pull needs credentials too: build once with them, so the push is all that differs
    // (the second build's RUN is a cache hit; only its push runs).
    const pushed = await solveWith(true, { buildId: `push-yes-${tag}`, ...o });
    expect(pushed.exporterResponse['containerimage.digest']).toMatch(/^sha256:/);
    const refused = await solveWith(false, { buildId: `push-no-${tag}`, ...o }).catch(
      (e: unknown) => e,
    );
    expect(refused).toMatchObject({ code: 'REGISTRY_AUTH' });
  });
});
