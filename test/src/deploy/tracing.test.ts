/**
 * One build's trace across three processes: this test process as the client (`@kiln/client`
 * with the Node SDK installed by `@kiln/ops`' `startTracing`), a real scheduler and a real
 * worker process, all exporting OTLP/HTTP (JSON, `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) to a
 * receiver of the test's own: a plain HTTP server decoding `/v1/traces`. The client's span, the
 * scheduler's build and vertex spans and the worker's task span share one trace id, and each
 * is the parent of the next.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import { join } from 'node:path';
import { KilnClient } from '@kiln/client';
import { LinuxAmd64, marshal, mkfile, scratch } from '@kiln/llb';
import { startTracing } from '@kiln/ops';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, makeTempDir, startNats, waitFor } from '../harness/index.js';
import { bundleEntries, startScheduler, startWorker, uid } from '../chaos/farm.js';
import type { Entries } from '../chaos/farm.js';

interface ReceivedSpan {
  service: string;
  name: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  attributes: Record<string, unknown>;
}

interface OtlpJson {
  resourceSpans?: {
    resource?: { attributes?: { key: string; value: Record<string, unknown> }[] };
    scopeSpans?: {
      spans?: {
        name: string;
        traceId: string;
        spanId: string;
        parentSpanId?: string;
        attributes?: { key: string; value: Record<string, unknown> }[];
      }[];
    }[];
  }[];
}

const value = (v: Record<string, unknown>): unknown => Object.values(v)[0];

/** A minimal OTLP/HTTP JSON trace receiver. */
async function startReceiver(): Promise<{ url: string; spans: ReceivedSpan[]; server: Server }> {
  const spans: ReceivedSpan[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/traces') {
        res.writeHead(404).end();
        return;
      }
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as OtlpJson;
      for (const rs of body.resourceSpans ?? []) {
        const attr = rs.resource?.attributes?.find((a) => a.key === 'service.name');
        const service = String(attr ? value(attr.value) : '');
        for (const ss of rs.scopeSpans ?? [])
          for (const s of ss.spans ?? [])
            spans.push({
              service,
              name: s.name,
              traceId: s.traceId,
              spanId: s.spanId,
              parentSpanId: s.parentSpanId ?? '',
              attributes: Object.fromEntries(
                (s.attributes ?? []).map((a) => [a.key, value(a.value)]),
              ),
            });
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return { url: `http://127.0.0.1:${port}`, spans, server };
}

let tmp: { dir: string; remove: () => void };
let entries: Entries;

beforeAll(async () => {
  tmp = makeTempDir('tracing');
  entries = await bundleEntries(tmp.dir);
});

afterAll(() => tmp?.remove());

/** A receiver, and a scheduler and a worker exporting to it (OTLP/HTTP JSON, short batches). */
async function tracedFarm(workerId: string) {
  const receiver = await startReceiver();
  const otel = {
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_BSP_SCHEDULE_DELAY: '100',
  };
  const nats = await startNats();
  const dir = join(tmp.dir, uid());
  const storeDir = join(dir, 'store');
  const s = await startScheduler(entries, nats.url, { env: { ...otel, KILN_STORE_DIR: storeDir } });
  const w = await startWorker(entries, nats.url, {
    id: workerId,
    stateDir: join(dir, 'state'),
    storeDir,
    env: otel,
  });
  const stop = async (): Promise<void> => {
    await w.proc.stop(10_000);
    await s.proc.stop(5_000);
    await nats.stop();
    receiver.server.close();
  };
  return { receiver, otel, dir, addr: s.addr, stop };
}

describe('tracing', () => {
  it("one build's trace spans the client, the scheduler and the worker", async () => {
    const { receiver, otel, addr, stop } = await tracedFarm('trace-1');
    // The client is this process: the SDK reads the same variables from its environment.
    Object.assign(process.env, otel);
    const tracing = await startTracing('kiln-test-client', process.env);
    expect(tracing.enabled).toBe(true);
    const client = await KilnClient.connect(addr);
    try {
      const buildId = `t-${uid()}`;
      const def = marshal(scratch().file(mkfile(`/t-${uid()}`, 0o644, 'trace')), {
        platform: LinuxAmd64,
      });
      await client.solve({ buildId, definition: def });
      await tracing.shutdown();
      const find = (service: string, name: string): ReceivedSpan | undefined =>
        receiver.spans.find(
          (x) =>
            x.service === service &&
            x.name === name &&
            (name === 'kiln.task' || x.attributes['kiln.build.id'] === buildId),
        );
      const spans = await waitFor('spans from the three processes', () => {
        const solve = find('kiln-test-client', 'kiln.solve');
        const build = find('kiln-scheduler', 'kiln.build');
        const vertex = find('kiln-scheduler', 'kiln.vertex');
        const task = find('kiln-worker', 'kiln.task');
        return solve && build && vertex && task ? { solve, build, vertex, task } : undefined;
      });
      const traceIds = new Set(Object.values(spans).map((x) => x.traceId));
      expect(traceIds.size).toBe(1);
      expect(spans.build.parentSpanId).toBe(spans.solve.spanId);
      expect(spans.vertex.parentSpanId).toBe(spans.build.spanId);
      expect(spans.task.parentSpanId).toBe(spans.vertex.spanId);
      expect(spans.task.attributes['kiln.worker.id']).toBe('trace-1');
    } finally {
      client.close();
      await stop();
      await tracing.shutdown();
      for (const k of Object.keys(otel)) delete process.env[k];
    }
  });

  it('the kiln command starts the trace: its span is the root, the farm spans under it', async () => {
    const { receiver, otel, dir, addr, stop } = await tracedFarm('trace-cli');
    try {
      const ctx = join(dir, 'ctx');
      mkdirSync(ctx, { recursive: true });
      writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY a /a\n');
      writeFileSync(join(ctx, 'a'), `trace ${uid()}\n`);
      // The shipped command (bin/kiln.js and its bundle: needs `npm run build`), as a process.
      const out = spawnSync(
        process.execPath,
        [
          join(REPO_ROOT, 'cli/bin/kiln.js'),
          'build',
          '--addr',
          addr,
          '--progress',
          'plain',
          '-o',
          `type=local,dest=${join(dir, 'out')}`,
          ctx,
        ],
        { env: { ...process.env, ...otel }, encoding: 'utf8', timeout: 120_000 },
      );
      expect(out.status, out.stderr).toBe(0);
      const spans = await waitFor('the command, the scheduler and the worker', () => {
        const root = receiver.spans.find((x) => x.service === 'kiln' && x.name === 'kiln build');
        if (!root) return undefined;
        const inTrace = (service: string, name: string): ReceivedSpan | undefined =>
          receiver.spans.find(
            (x) => x.service === service && x.name === name && x.traceId === root.traceId,
          );
        const solve = inTrace('kiln', 'kiln.solve');
        const build = inTrace('kiln-scheduler', 'kiln.build');
        const task = inTrace('kiln-worker', 'kiln.task');
        return solve && build && task ? { root, solve, build, task } : undefined;
      });
      expect(spans.root.parentSpanId).toBe('');
      expect(spans.root.attributes['kiln.command']).toBe('build');
      expect(spans.solve.parentSpanId).toBe(spans.root.spanId);
      expect(spans.build.parentSpanId).toBe(spans.solve.spanId);
      expect(spans.task.attributes['kiln.worker.id']).toBe('trace-cli');
    } finally {
      await stop();
    }
  });
});
