// The scheduler with the real worker: ControlServer + Dispatcher in process, two worker
// processes (the worker service's own entry, bundled from source and run, never imported) that
// run real LLB ops (the harness's fixture busybox image from its registry, real crun) and share a
// filesystem content store. A Definition solved through the client library.
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { KilnClient, dockerfileInput } from '@kiln/client';
import { LinuxAmd64, image, marshal, parseDefinition } from '@kiln/llb';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher } from '../dispatch/index.js';
import { loadHarness, until } from '../dispatch/testing.js';
import type { Harness, ManagedProcessLike, NatsHandle } from '../dispatch/testing.js';
import { registryMetaResolver } from '../registry/registry-meta-resolver.js';
import { ControlServer } from './control-server.js';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';

let h: Harness;
let tmp: { dir: string; remove: () => void };
let nats: NatsHandle;
let nc: NatsConnection;
let dispatcher: Dispatcher;
let server: ControlServer;
let client: KilnClient;
let storeDir: string;
const procs: ManagedProcessLike[] = [];

async function bundleWorkerMain(dir: string): Promise<string> {
  const esbuild = (await import(/* @vite-ignore */ 'esbuild')) as {
    build(o: Record<string, unknown>): Promise<unknown>;
  };
  const outfile = join(dir, 'kiln-worker-main.mjs');
  await esbuild.build({
    entryPoints: [join(h.REPO_ROOT, 'services/worker/src/node/main.ts')],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    conditions: ['kiln-source'],
    outfile,
    logLevel: 'warning',
    banner: {
      js: "import { createRequire as __kilnRequire } from 'node:module'; const require = __kilnRequire(import.meta.url);",
    },
  });
  return outfile;
}

beforeAll(async () => {
  if (!fixture) throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through vitest');
  h = await loadHarness();
  tmp = h.makeTempDir('scheduler-worker');
  storeDir = join(tmp.dir, 'store');
  const [n, main] = await Promise.all([h.startNats(), bundleWorkerMain(tmp.dir)]);
  nats = n;
  nc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
  dispatcher = await Dispatcher.start({ nc, affinityDelayMs: 100, monitorIntervalMs: 100 });
  for (const id of ['int-w1', 'int-w2']) {
    const p = h.spawnManaged(
      process.execPath,
      [main, '--id', id, '--state-dir', join(tmp.dir, id), '--store-dir', storeDir],
      {
        name: `worker ${id}`,
        env: {
          ...process.env,
          KILN_NATS_URL: nats.url,
          KILN_WORKER_HEARTBEAT_MS: '250',
          KILN_LOG_LEVEL: 'warn',
        },
      },
    );
    procs.push(p);
    await until(`${id} to register`, () => {
      if (p.hasExited()) throw new Error(`${id} exited:\n${p.output()}`);
      return dispatcher.liveWorkers().some((w) => w.id === id);
    });
  }
  server = new ControlServer({ dispatcher, metaResolver: registryMetaResolver() });
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
