// The scheduler with the real worker: ControlServer + Dispatcher in process, two worker
// processes (the worker service's own entry, bundled from source and run, never imported) that
// run real LLB ops (the harness's fixture busybox image from its registry, real crun) and share a
// filesystem content store. A Definition solved through the client library.
import { createHash, randomUUID } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { decodeMaterializeReply, encodeMaterializeJson, materializeSubject } from '@kiln/bus';
import { FsBlobStore } from '@kiln/store';
import { KilnClient, dockerfileInput } from '@kiln/client';
import type { StatusResponse } from '@kiln/client';
import { LinuxAmd64, image, marshal, parseDefinition } from '@kiln/llb';
import { KilnError } from '@kiln/protocol';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher } from '../dispatch/index.js';
import { registryMetaResolver } from '../registry-meta-resolver.js';
import { Authenticator, parseTokens } from './auth.js';
import { ControlServer } from './control-server.js';
import { bundleWorkerMain, spawnWorkerNode } from '../test-support/workers.js';
import type { ManagedProcess } from '@kiln/common';
import { makeTempDir, startNats } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
let nc: NatsConnection;
let dispatcher: Dispatcher;
let server: ControlServer;
let client: KilnClient;
let storeDir: string;
const procs: ManagedProcess[] = [];
/** How each sync of a local directory got the listing (the scheduler's metric). */
const syncs: ('full' | 'unchanged')[] = [];

beforeAll(async () => {
  if (!fixture) throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through vitest');
  tmp = makeTempDir('scheduler-worker');
  storeDir = join(tmp.dir, 'store');
  const [n, main] = await Promise.all([startNats(), bundleWorkerMain(tmp.dir)]);
  nats = n;
  nc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
  dispatcher = await Dispatcher.start({ nc, affinityDelayMs: 100, monitorIntervalMs: 100 });
  for (const id of ['int-w1', 'int-w2'])
    procs.push(
      await spawnWorkerNode(main, nats.url, {
        id,
        stateDir: join(tmp.dir, id),
        storeDir,
        registered: (w) => dispatcher.liveWorkers().some((x) => x.id === w),
      }),
    );
  server = new ControlServer({
    dispatcher,
    metaResolver: registryMetaResolver(),
    store: new FsBlobStore({ root: storeDir }),
    sessionWaitMs: 2_000,
    metrics: {
      buildStarted: () => undefined,
      buildFinished: () => undefined,
      vertexDone: () => undefined,
      contextSynced: (listing) => syncs.push(listing),
    },
  });
  const port = await server.listen('127.0.0.1:0');
  client = await KilnClient.connect(`127.0.0.1:${port}`);
});

afterAll(async () => {
  client?.close();
  await server?.close();
  await Promise.all(procs.map((p) => p.stop(5_000)));
  await dispatcher?.close();
  await nc?.close();
  await nats?.stop();
  tmp?.remove();
});

describe('scheduler with real workers', () => {
  it('solves image -> RUN -> RUN through the control API; the result layers are in the store', async () => {
    const tag = randomUUID();
    const base = image(fixture);
    const a = base.run({ args: ['/bin/sh', '-c', `echo ${tag} > /a.txt`] }).root();
    const b = a.run({ args: ['/bin/sh', '-c', 'cat /a.txt > /b.txt'] }).root();
    const def = marshal(b, { platform: LinuxAmd64 });
    const digests = parseDefinition(def.toProto()).order;
    const buildId = `int-${tag}`;
    const res = await client.solve({ buildId, definition: def });
    const layers = JSON.parse(res.exporterResponse['result.layers'] ?? '[]') as {
      digest: string;
    }[];
    expect(layers.length).toBeGreaterThan(1); // the base image's layers plus the two RUNs'
    expect(res.exporterResponse['result.id']).toMatch(/^sha256:/);
    expect(['int-w1', 'int-w2']).toContain(res.exporterResponse['result.worker']);
    // Outputs are uploaded before the result is reported: every layer is in the shared store
    // (the filesystem store's OCI layout, blobs/sha256/<hex>).
    for (const l of layers)
      expect(existsSync(join(storeDir, 'blobs', 'sha256', l.digest.replace(/^sha256:/, '')))).toBe(
        true,
      );
    const vertexes = [];
    for await (const f of client.status(buildId)) vertexes.push(...f.vertexes);
    for (const d of digests)
      expect(vertexes.some((v) => v.digest === d && Number(v.completedUnixNano) > 0)).toBe(true);
  });

  it('solves a Dockerfile with base image config from the registry (registryMetaResolver)', async () => {
    const tag = randomUUID();
    const res = await client.solve({
      buildId: `int-df-${tag}`,
      frontend: 'dockerfile.v0',
      attrs: { platform: 'linux/amd64' },
      inputs: {
        dockerfile: dockerfileInput(`FROM ${fixture}\nRUN echo ${tag} > /x.txt\nENV AFTER=1\n`),
      },
    });
    const config = JSON.parse(res.exporterResponse['containerimage.config'] ?? '{}') as {
      config?: { Env?: string[] };
      rootfs?: { diff_ids?: string[] };
    };
    // PATH comes from the fixture image's own config, fetched from the registry.
    expect(config.config?.Env?.some((e) => e.startsWith('PATH='))).toBe(true);
    expect(config.config?.Env).toContain('AFTER=1');
    const layers = JSON.parse(res.exporterResponse['result.layers'] ?? '[]') as unknown[];
    expect(layers.length).toBeGreaterThan(1);
  });
});

/** Collects an export's bytes. */
class Sink extends Writable {
  chunks: Buffer[] = [];
  override _write(c: Buffer, _e: BufferEncoding, cb: () => void): void {
    this.chunks.push(c);
    cb();
  }
  get bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/** The files of a tar (path -> content), read by tar(1). */
function untar(bytes: Buffer, dir: string): (p: string) => string {
  mkdirSync(dir, { recursive: true });
  execFileSync('tar', ['-x', '-C', dir], { input: bytes });
  return (p) => readFileSync(join(dir, p), 'utf8');
}

describe('sessions and exporters with real workers', () => {
  it('serves the local context and a secret to remote workers and streams the tar export back', async () => {
    const tag = randomUUID();
    const ctx = join(tmp.dir, `ctx-${tag}`);
    mkdirSync(join(ctx, 'sub'), { recursive: true });
    writeFileSync(join(ctx, 'hello.txt'), `hello ${tag}\n`);
    writeFileSync(join(ctx, 'sub', 'other.txt'), 'not copied\n');
    const secret = `s3cret-${tag}`;
    const sinks = new Map<string, Sink>();
    const session = client.session({
      localDirs: { context: ctx },
      secrets: (id) => Promise.resolve(id === 'tok' ? Buffer.from(secret) : undefined),
      onExport: (index, platform) => {
        const s = new Sink();
        sinks.set(`${index}/${platform}`, s);
        return s;
      },
    });
    try {
      const res = await client.solve({
        buildId: `int-sess-${tag}`,
        sessionId: session.id,
        frontend: 'dockerfile.v0',
        attrs: { platform: 'linux/amd64' },
        inputs: {
          dockerfile: dockerfileInput(
            [
              `FROM ${fixture}`,
              'COPY hello.txt /hello.txt',
              'RUN --mount=type=secret,id=tok test "$(cat /run/secrets/tok)" = "' +
                secret +
                '" && echo secret-ok > /secret.txt',
            ].join('\n'),
          ),
        },
        exporters: [{ type: 'tar' }],
      });
      expect(res.exporterResponse['export.count']).toBe('1');
      await session.exportsWritten(1);
      const tarBytes = sinks.get('0/')?.bytes ?? Buffer.alloc(0);
      const read = untar(tarBytes, join(tmp.dir, `out-${tag}`));
      expect(read('hello.txt')).toBe(`hello ${tag}\n`);
      expect(read('secret.txt')).toBe('secret-ok\n');
      expect(existsSync(join(tmp.dir, `out-${tag}`, 'sub'))).toBe(false);
      // The context file went through the store by content; the secret is in no layer, nor in
      // the export.
      const fileDigest = createHash('sha256').update(`hello ${tag}\n`).digest('hex');
      expect(existsSync(join(storeDir, 'blobs', 'sha256', fileDigest))).toBe(true);
      expect(tarBytes.includes(secret)).toBe(false);
      // The tar exporter needed no blob of the result: its layers are made on request, by the
      // worker holding it.
      const reply = decodeMaterializeReply(
        (
          await nc.request(
            materializeSubject(res.exporterResponse['result.worker'] ?? ''),
            encodeMaterializeJson({ resultId: res.exporterResponse['result.id'] ?? '' }),
            { timeout: 60_000 },
          )
        ).data,
      );
      if ('error' in reply) throw new Error(reply.error.message);
      const layers = reply.layers;
      expect(layers.length).toBeGreaterThan(0);
      for (const l of layers) {
        const blob = readFileSync(join(storeDir, 'blobs', 'sha256', l.digest.slice(7)));
        expect(gunzipSync(blob).includes(secret)).toBe(false);
      }
    } finally {
      session.close();
    }
  });

  it('keys the context by its content (unchanged: a cache hit); a COPY is keyed by the content of the files it reads', async () => {
    const tag = randomUUID();
    const ctx = join(tmp.dir, `ctx2-${tag}`);
    mkdirSync(ctx, { recursive: true });
    writeFileSync(join(ctx, 'hello.txt'), 'one\n');
    writeFileSync(join(ctx, 'other.txt'), 'unrelated\n');
    const dockerfile = [
      `FROM ${fixture}`,
      'COPY hello.txt /hello.txt',
      `RUN cat /hello.txt > /copy.txt && echo ${tag} >> /copy.txt`,
      // The context's followpaths are what the COPYs read: both files are in it.
      'COPY other.txt /other.txt',
    ].join('\n');
    const build = async (n: number) => {
      const synced = syncs.length;
      const sink = new Sink();
      const session = client.session({ localDirs: { context: ctx }, onExport: () => sink });
      const buildId = `int-ctx-${n}-${tag}`;
      try {
        const res = await client.solve({
          buildId,
          sessionId: session.id,
          frontend: 'dockerfile.v0',
          attrs: { platform: 'linux/amd64' },
          inputs: { dockerfile: dockerfileInput(dockerfile) },
          exporters: [{ type: 'tar' }],
        });
        await session.exportsWritten(Number(res.exporterResponse['export.count']));
      } finally {
        session.close();
      }
      const vertexes: StatusResponse['vertexes'] = [];
      for await (const f of client.status(buildId)) vertexes.push(...f.vertexes);
      // The last (completed) snapshot of each vertex.
      const last = (name: string) => {
        const v = vertexes.filter((x) => (x.name ?? '').includes(name)).at(-1);
        expect(Number(v?.completedUnixNano ?? 0), `${name} completed`).toBeGreaterThan(0);
        return v?.cached;
      };
      const read = untar(sink.bytes, join(tmp.dir, `ctx2-out-${n}-${tag}`));
      return {
        copy: read('copy.txt'),
        other: read('other.txt'),
        // The context was synced once, its listing sent in full or (the same as the last
        // sync's) not sent at all.
        listing: syncs.slice(synced).join(','),
        contextCached: last('load build context'),
        copyCached: last('COPY hello.txt'),
        runCached: last('cat /hello.txt'),
        copyOtherCached: last('COPY other.txt'),
      };
    };
    const first = await build(1);
    expect(first).toEqual({
      copy: `one\n${tag}\n`,
      other: 'unrelated\n',
      listing: 'full',
      contextCached: false,
      copyCached: false,
      runCached: false,
      copyOtherCached: false,
    });
    // A file the first COPY does not read changes: the context is resolved again and is a new
    // result, but that COPY is keyed by the checksum of hello.txt alone (computed by the worker
    // holding the context): the COPY itself is a cache hit, and so is the RUN. The COPY of
    // other.txt runs again.
    writeFileSync(join(ctx, 'other.txt'), 'changed\n');
    expect(await build(2)).toEqual({
      copy: `one\n${tag}\n`,
      other: 'changed\n',
      listing: 'full',
      contextCached: false,
      copyCached: true,
      runCached: true,
      copyOtherCached: false,
    });
    // The file the first COPY reads changes: everything after the context runs again.
    writeFileSync(join(ctx, 'hello.txt'), 'two\n');
    expect(await build(3)).toEqual({
      copy: `two\n${tag}\n`,
      other: 'changed\n',
      listing: 'full',
      contextCached: false,
      copyCached: false,
      runCached: false,
      copyOtherCached: false,
    });
    // Nothing changes: the client's listing is the last sync's (it says so instead of sending
    // it), the scheduler's sync gives the same manifest, so the context itself is a cache hit
    // (keyed by that content, not by the build), and so is everything after it.
    expect(await build(4)).toEqual({
      copy: `two\n${tag}\n`,
      other: 'changed\n',
      listing: 'unchanged',
      contextCached: true,
      copyCached: true,
      runCached: true,
      copyOtherCached: true,
    });
    // The file's time alone changes: the manifest differs, so the context is synced into a new
    // result of the same content, and everything after it is still a cache hit.
    utimesSync(join(ctx, 'hello.txt'), new Date(1_000_000), new Date(1_000_000));
    expect(await build(5)).toEqual({
      copy: `two\n${tag}\n`,
      other: 'changed\n',
      listing: 'full',
      contextCached: false,
      copyCached: true,
      runCached: true,
      copyOtherCached: true,
    });
  });

  it('exports an OCI image tarball through the session', async () => {
    const tag = randomUUID();
    const sink = new Sink();
    const session = client.session({ onExport: () => sink });
    try {
      const res = await client.solve({
        buildId: `int-oci-${tag}`,
        sessionId: session.id,
        frontend: 'dockerfile.v0',
        attrs: { platform: 'linux/amd64' },
        inputs: { dockerfile: dockerfileInput(`FROM ${fixture}\nRUN echo ${tag} > /t.txt\n`) },
        exporters: [{ type: 'oci', attrs: { name: 'example.com/t:1' } }],
      });
      await session.exportsWritten(Number(res.exporterResponse['export.count']));
      const read = untar(sink.bytes, join(tmp.dir, `oci-${tag}`));
      expect(JSON.parse(read('oci-layout'))).toEqual({ imageLayoutVersion: '1.0.0' });
      const index = JSON.parse(read('index.json')) as {
        manifests: { annotations?: Record<string, string> }[];
      };
      expect(index.manifests[0]?.annotations?.['org.opencontainers.image.ref.name']).toBe('1');
    } finally {
      session.close();
    }
  });

  it("hands an artifact over by reference to a client that reads the farm's store (the local farm's)", async () => {
    // A second scheduler of the same farm (its own dispatcher: closing a control server closes
    // its dispatcher), whose clients share its store (as the local farm's, under their state dir).
    const local = new ControlServer({
      dispatcher: await Dispatcher.start({ nc, affinityDelayMs: 100, monitorIntervalMs: 100 }),
      metaResolver: registryMetaResolver(),
      store: new FsBlobStore({ root: storeDir }),
      storeReadByClients: true,
      sessionWaitMs: 2_000,
    });
    const localClient = await KilnClient.connect(`127.0.0.1:${await local.listen('127.0.0.1:0')}`);
    const tag = randomUUID();
    const exportOci = async (c: KilnClient, localStore?: string) => {
      const sink = new Sink();
      const session = c.session({ onExport: () => sink, ...(localStore ? { localStore } : {}) });
      try {
        const res = await c.solve({
          buildId: `int-ref-${randomUUID()}`,
          sessionId: session.id,
          frontend: 'dockerfile.v0',
          attrs: { platform: 'linux/amd64' },
          inputs: { dockerfile: dockerfileInput(`FROM ${fixture}\nRUN echo ${tag} > /t.txt\n`) },
          exporters: [{ type: 'oci' }],
        });
        await session.exportsWritten(Number(res.exporterResponse['export.count']));
      } finally {
        session.close();
      }
      return { bytes: sink.bytes, fromStore: session.exportsFromStore };
    };
    try {
      // Streamed: by the farm whose clients do not read its store, and by this one to a client
      // that names another directory.
      const streamed = await exportOci(client, storeDir);
      expect(streamed.fromStore).toBe(0);
      const other = await exportOci(localClient, join(tmp.dir, 'not-the-store'));
      expect(other.fromStore).toBe(0);
      // By reference: the same bytes, copied from the store.
      const copied = await exportOci(localClient, storeDir);
      expect(copied.fromStore).toBe(1);
      expect(copied.bytes.equals(streamed.bytes)).toBe(true);
      expect(other.bytes.equals(streamed.bytes)).toBe(true);
    } finally {
      localClient.close();
      await local.close();
    }
  });

  it('fails a build whose session never opens, typed, and one that needs a session without one', async () => {
    await expect(
      client.solve({
        buildId: `int-nosess-${randomUUID()}`,
        sessionId: `never-${randomUUID()}`,
        definition: marshal(image(fixture), { platform: LinuxAmd64 }),
      }),
    ).rejects.toMatchObject({ code: 'SESSION_UNAVAILABLE' });
    await expect(
      client.solve({
        buildId: `int-noexp-${randomUUID()}`,
        definition: marshal(image(fixture), { platform: LinuxAmd64 }),
        exporters: [{ type: 'local' }],
      }),
    ).rejects.toMatchObject({ code: 'SOLVE_REQUEST_INVALID' });
  });
});

describe('tenants and entitlements with real workers', () => {
  const tokenA = `ta-${randomUUID()}`;
  const tokenB = `tb-${randomUUID()}`;
  let farm: ControlServer;
  let a: KilnClient;
  let b: KilnClient;

  beforeAll(async () => {
    // A farm that allows both entitlements to its two tenants (the builds still have to ask).
    farm = new ControlServer({
      dispatcher,
      metaResolver: registryMetaResolver(),
      store: new FsBlobStore({ root: storeDir }),
      auth: new Authenticator({
        tokens: parseTokens(`team-a:${tokenA}\nteam-b:${tokenB}`, 'test'),
        allow: ['security.insecure', 'network.host'],
      }),
    });
    const port = await farm.listen('127.0.0.1:0');
    a = await KilnClient.connect(`127.0.0.1:${port}`, { token: tokenA });
    b = await KilnClient.connect(`127.0.0.1:${port}`, { token: tokenB });
  });

  afterAll(async () => {
    a?.close();
    b?.close();
    await farm?.close();
  });

  const dockerfile = (c: KilnClient, lines: string[], entitlements: string[] = []) =>
    c.solve({
      buildId: `int-ent-${randomUUID()}`,
      frontend: 'dockerfile.v0',
      attrs: { platform: 'linux/amd64' },
      entitlements,
      inputs: { dockerfile: dockerfileInput([`FROM ${fixture}`, ...lines].join('\n')) },
    });

  it('runs RUN --security=insecure when asked for and allowed, and only then', async () => {
    const tag = randomUUID();
    // Mounting needs CAP_SYS_ADMIN: only the insecure mode has it.
    const run = `RUN --security=insecure mkdir -p /m && mount -t tmpfs none /m && echo ${tag}`;
    await expect(dockerfile(a, [run])).rejects.toMatchObject({
      code: 'ENTITLEMENT_DENIED',
      details: { sourceLines: '2-2' },
    });
    const res = await dockerfile(a, [run], ['security.insecure']);
    expect(res.exporterResponse['result.id']).toMatch(/^sha256:/);
    // The same command in the default sandbox fails: the entitlement is what made it work.
    await expect(
      dockerfile(a, [`RUN mkdir -p /m && mount -t tmpfs none /m && echo ${tag}`]),
    ).rejects.toMatchObject({ code: expect.stringMatching(/EXEC|VERTEX/) as unknown });
  });

  it('keys export tasks per tenant: the same artifact is exported again for another tenant', async () => {
    const tag = randomUUID();
    // The same result for both tenants (the base image's layers; ENV only changes the config).
    const lines = [`FROM ${fixture}`, `ENV KILN_TAG=${tag}`];
    const exportCached = async (c: KilnClient, n: string): Promise<boolean | null | undefined> => {
      const sink = new Sink();
      const session = c.session({ onExport: () => sink });
      const buildId = `int-exp-${n}-${tag}`;
      try {
        const res = await c.solve({
          buildId,
          sessionId: session.id,
          frontend: 'dockerfile.v0',
          attrs: { platform: 'linux/amd64' },
          inputs: { dockerfile: dockerfileInput(lines.join('\n')) },
          exporters: [{ type: 'tar' }],
        });
        await session.exportsWritten(Number(res.exporterResponse['export.count']));
      } finally {
        session.close();
      }
      expect(sink.bytes.length).toBeGreaterThan(0);
      const vertexes: StatusResponse['vertexes'] = [];
      for await (const f of c.status(buildId)) vertexes.push(...f.vertexes);
      const v = vertexes.filter((x) => (x.name ?? '').includes('exporting to tar')).at(-1);
      expect(Number(v?.completedUnixNano ?? 0)).toBeGreaterThan(0);
      return v?.cached;
    };
    expect(await exportCached(a, 'a1')).toBeFalsy();
    // Another tenant, the same result: its own export task, not team-a's record.
    expect(await exportCached(b, 'b1')).toBeFalsy();
    // Within a tenant an unchanged export is a cache hit, as before.
    expect(await exportCached(a, 'a2')).toBe(true);
  });

  it("runs RUN --network=host when asked for and allowed: it reaches the host's loopback", async () => {
    const tag = randomUUID();
    const http = createServer((_req, res) => res.end(`hello ${tag}`));
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
    const port = (http.address() as AddressInfo).port;
    try {
      const run = `RUN --network=host wget -q -O - http://127.0.0.1:${port}/ | grep -q ${tag}`;
      await expect(dockerfile(b, [run])).rejects.toMatchObject({ code: 'ENTITLEMENT_DENIED' });
      const res = await dockerfile(b, [run], ['network.host']);
      expect(res.exporterResponse['result.id']).toMatch(/^sha256:/);
    } finally {
      http.close();
    }
  });

  it('keeps RUN --mount=type=cache directories per tenant', async () => {
    const tag = randomUUID();
    const mount = `--mount=type=cache,id=shared-${tag},target=/cache`;
    // team-a leaves a marker in its cache mount and sees it in a later build.
    await dockerfile(a, [`RUN ${mount} echo a > /cache/marker`]);
    await dockerfile(a, [`RUN ${mount} test -e /cache/marker && echo again`]);
    // team-b's mount of the same id is its own: empty.
    await dockerfile(b, [`RUN ${mount} test ! -e /cache/marker`]);
    await expect(
      dockerfile(b, [`RUN ${mount} test -e /cache/marker && echo b`]),
    ).rejects.toBeInstanceOf(KilnError);
  });
});
