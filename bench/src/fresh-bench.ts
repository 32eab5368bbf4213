/**
 * A cache the cluster shares (issue 13 item 3): a worker that has never seen a build rebuilds it
 * from what another worker left in the shared store.
 *
 * A farm in this process (nats-server, the scheduler's Dispatcher and control API, a filesystem
 * content store, a local registry holding the busybox fixture) and `kiln build --addr` as a user
 * runs it. The Dockerfile: FROM busybox, a RUN writing 32 MiB, a COPY of a file that changes every
 * build, a RUN reading both. Each round, interleaved:
 * - warm: worker A (which built it before and holds every result) rebuilds with the file changed;
 * - fresh: A is stopped, a new worker B with an empty state dir rebuilds with the file changed
 *   again: it must fetch the base image and the 32 MiB layer from the store.
 * Baseline, same run: the warm rebuild, plus the time to read the bytes B fetched from the same
 * store (counted on B's store handle). Target: fresh <= 1.5 x (warm + read).
 * `KILN_BENCH_LOG_LEVEL=info` prints the farm's log lines: each task's `inputsMs` / `runMs` /
 * `outputsMs` say where a build's time went.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Readable } from 'node:stream';
import { Authenticator, ControlServer, Dispatcher, registryMetaResolver } from '@kiln/scheduler';
import { FsBlobStore } from '@kiln/store';
import type { Digest, GetOptions } from '@kiln/store';
import { REPO_ROOT, makeTempDir, pushFixtures, startNats, startRegistry } from '@kiln/test';
import { WorkerNode, loadConfig } from '@kiln/worker';
import { connect } from '@nats-io/transport-node';
import { pino } from 'pino';
import { median, printTable } from './table.js';

const kilnBin = join(REPO_ROOT, 'cli/bin/kiln.js');

/** A store handle that counts the bytes read through it. */
class CountingStore extends FsBlobStore {
  bytesRead = 0;
  override async get(digest: Digest, opts?: GetOptions): Promise<Readable> {
    const s = await super.get(digest, opts);
    s.on('data', (c: Buffer) => (this.bytesRead += c.length));
    return s;
  }
}

export async function runFreshBench(rounds = 3): Promise<void> {
  const tmp = makeTempDir('fresh-bench');
  const nats = await startNats();
  const reg = await startRegistry();
  const nc = await connect({ servers: nats.url, noAsyncTraces: true });
  const storeDir = join(tmp.dir, 'store');
  const log = pino({ level: process.env.KILN_BENCH_LOG_LEVEL ?? 'warn' });
  const dispatcher = await Dispatcher.start({ nc });
  const server = new ControlServer({
    dispatcher,
    store: new FsBlobStore({ root: storeDir }),
    metaResolver: registryMetaResolver({ insecureRegistries: [reg.addr] }),
    defaultPlatform: 'linux/amd64',
    log,
    auth: new Authenticator({}),
  });
  const workers: WorkerNode[] = [];
  try {
    const { image } = await pushFixtures(reg.addr);
    const addr = `127.0.0.1:${await server.listen('127.0.0.1:0')}`;
    const ctx = join(tmp.dir, 'ctx');
    mkdirSync(ctx);
    writeFileSync(
      join(ctx, 'Dockerfile'),
      `FROM ${image}\nRUN dd if=/dev/urandom of=/big bs=1M count=32\nCOPY f.txt /f.txt\n` +
        `RUN cat /f.txt /big | sha256sum > /sum\n`,
    );
    const worker = async (id: string, store = new CountingStore({ root: storeDir })) => {
      const node = await WorkerNode.start(
        loadConfig({
          env: {
            KILN_NATS_URL: nats.url,
            KILN_WORKER_ID: id,
            KILN_WORKER_STATE_DIR: join(tmp.dir, id),
            KILN_STORE_DIR: storeDir,
            KILN_INSECURE_REGISTRIES: reg.addr,
          },
        }),
        { logger: log, store },
      );
      workers.push(node);
      const deadline = Date.now() + 30_000;
      while (!dispatcher.liveWorkers().some((w) => w.id === id)) {
        if (Date.now() > deadline) throw new Error(`worker ${id} did not register`);
        await new Promise((r) => setTimeout(r, 20));
      }
      return { node, store };
    };
    const stop = async (node: WorkerNode): Promise<void> => {
      await node.close();
      workers.splice(workers.indexOf(node), 1);
      const deadline = Date.now() + 30_000;
      while (dispatcher.liveWorkers().some((w) => w.id === node.id)) {
        if (Date.now() > deadline) throw new Error(`worker ${node.id} still registered`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    let n = 0;
    // Asynchronously: the farm answering it runs in this process.
    const build = async (): Promise<number> => {
      writeFileSync(join(ctx, 'f.txt'), `change ${n++}\n`);
      const t0 = performance.now();
      await promisify(execFile)(kilnBin, ['build', '--addr', addr, '--progress', 'plain', ctx], {
        env: { ...process.env, KILN_ADDR: '' },
        maxBuffer: 64 << 20,
      }).catch((err: Error & { stdout?: string; stderr?: string }) => {
        throw new Error(`kiln build failed:\n${err.stdout ?? ''}\n${err.stderr ?? err.message}`);
      });
      return performance.now() - t0;
    };
    let a = await worker('fresh-a');
    await build(); // cold, on A: every result now in A's state dir, and its layers in the store
    await build(); // warm-up of the warm case
    const rows: { warm: number; fresh: number; mb: number; read: number }[] = [];
    for (let i = 0; i < rounds; i++) {
      const warm = await build();
      await stop(a.node);
      const b = await worker(`fresh-b${i}`);
      const fresh = await build();
      const bytes = b.store.bytesRead;
      await stop(b.node);
      // Reading the same number of bytes from the same store, in this process: the fetch's floor.
      const t0 = performance.now();
      let left = bytes;
      const reader = new FsBlobStore({ root: storeDir });
      for await (const blob of reader.list()) {
        if (left <= 0) break;
        for await (const c of await reader.get(blob.digest)) left -= (c as Buffer).length;
      }
      const read = performance.now() - t0;
      rows.push({ warm, fresh, mb: bytes / 2 ** 20, read });
      a = await worker('fresh-a');
    }
    const med = (f: (r: (typeof rows)[number]) => number): number => median(rows.map(f));
    const warm = med((r) => r.warm);
    const fresh = med((r) => r.fresh);
    const read = med((r) => r.read);
    printTable(
      `a rebuild on a fresh worker from the shared store (medians of ${rounds} interleaved rounds)`,
      ['case', 'ms', 'MiB read from the store', 'vs warm + read'],
      [
        [
          'warm: the worker that built it',
          warm.toFixed(0),
          '0',
          `${(warm / (warm + read)).toFixed(2)}x`,
        ],
        ['read those bytes from the store', read.toFixed(0), med((r) => r.mb).toFixed(1), '-'],
        [
          'fresh: a worker that never saw it',
          fresh.toFixed(0),
          med((r) => r.mb).toFixed(1),
          `${(fresh / (warm + read)).toFixed(2)}x (target <= 1.5x)`,
        ],
      ],
    );
  } finally {
    for (const w of workers.splice(0)) await w.close().catch(() => undefined);
    await server.close();
    await dispatcher.close();
    await nc.close();
    await reg.stop();
    await nats.stop();
    tmp.remove();
  }
}
