// The checksum responder of a real WorkerNode (a fresh nats-server for this file, the scheduler's
// real Dispatcher loaded at run time, real snapshots): `kiln.checksum.<id>` requests over NATS
// for results the node made from a local directory. No mocks; waits are on conditions.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { checksumSubject, decodeChecksumReply, encodeChecksumJson } from '@kiln/bus';
import type { ChecksumDepSpec, ChecksumReply } from '@kiln/bus';
import { LinuxAmd64, local, marshal } from '@kiln/llb';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { depChecksum } from '../cache/dep-checksum.js';
import { loadConfig } from './config.js';
import type { WorkerConfig } from './config.js';
import { WorkerNode } from './worker-node.js';
import { startDispatcher, submitGraph } from '../test-support/graphs.js';
import type { DispatcherLike } from '../test-support/graphs.js';
import { makeTempDir, startNats, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
let nc: NatsConnection;
let d: DispatcherLike;
let ctxDir: string;
let node: WorkerNode;
const nodes: WorkerNode[] = [];

function config(id: string): WorkerConfig {
  return loadConfig({
    argv: [
      ...['--id', id, '--state-dir', join(tmp.dir, id), '--log-level', 'silent'],
      ...['--local', `context=${ctxDir}`],
    ],
    env: {
      KILN_NATS_URL: nats.url,
      KILN_STORE_DIR: join(tmp.dir, 'store'),
      KILN_WORKER_HEARTBEAT_MS: '250',
      KILN_WORKER_DRAIN_TIMEOUT_MS: '2000',
    },
  });
}

async function startNode(id: string): Promise<WorkerNode> {
  const n = await WorkerNode.start(config(id));
  nodes.push(n);
  await waitFor(`the dispatcher to see ${id}`, () => d.liveWorkers().some((w) => w.id === id));
  return n;
}

const salt = (): string => Math.random().toString(36).slice(2);

/** Runs `local://context` on `n` (a fresh key each time, as a volatile source) -> its result id. */
async function snapshotContext(n: WorkerNode): Promise<string> {
  const { result } = await submitGraph(
    d,
    marshal(local('context'), { platform: LinuxAmd64 }).toBytes(),
    { salt: salt(), place: () => n.id },
  );
  expect(result.workerId).toBe(n.id);
  const id = result.outputs[0]?.resultId ?? '';
  expect(n.runner.snapshotOf(id)).toBeDefined();
  return id;
}

const spec = (selectors: string[], o: Partial<ChecksumDepSpec> = {}): ChecksumDepSpec => ({
  selectors,
  wildcard: false,
  followLinks: false,
  includePatterns: [],
  excludePatterns: [],
  ...o,
});

async function ask(
  workerId: string,
  body: Uint8Array | { resultId: string; deps: ChecksumDepSpec[] },
): Promise<ChecksumReply> {
  const data = body instanceof Uint8Array ? body : encodeChecksumJson(body);
  const msg = await nc.request(checksumSubject(workerId), data, { timeout: 10_000 });
  return decodeChecksumReply(msg.data);
}

/** The digests of a successful reply (fails the test on any error). */
async function digests(workerId: string, resultId: string, deps: ChecksumDepSpec[]) {
  const r = await ask(workerId, { resultId, deps });
  if ('error' in r) throw new Error(`error reply: ${r.error.code} ${r.error.message}`);
  return r.results.map((e) => {
    if ('error' in e) throw new Error(`error entry: ${e.error.code} ${e.error.message}`);
    return e.digest;
  });
}

beforeAll(async () => {
  tmp = makeTempDir('checksum-responder');
  nats = await startNats();
  nc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
  d = await startDispatcher(nc);
  ctxDir = join(tmp.dir, 'context');
  await mkdir(join(ctxDir, 'sub'), { recursive: true });
  await writeFile(join(ctxDir, 'hello.txt'), 'hello\n');
  await writeFile(join(ctxDir, 'other.txt'), 'unrelated\n');
  await writeFile(join(ctxDir, 'sub', 'a.txt'), 'a\n');
  await writeFile(join(ctxDir, 'sub', 'notes.md'), 'notes\n');
  node = await startNode('cs-a');
});

afterAll(async () => {
  await Promise.allSettled(nodes.map((n) => n.drain()));
  await d?.close();
  await nc?.close();
  await nats?.stop();
  tmp?.remove();
});

describe('checksum responder', () => {
  it('answers the content checksum of the selected paths of a held result, per spec', async () => {
    const r1 = await snapshotContext(node);
    const specs = [
      spec(['/hello.txt']),
      spec(['/sub'], { excludePatterns: ['*.md'] }),
      spec(['/*.txt'], { wildcard: true }),
      spec(['/hello.txt', '/sub/a.txt']),
    ];
    const before = await digests(node.id, r1, specs);
    for (const dg of before) expect(dg).toMatch(/^sha256:[0-9a-f]{64}(,sha256:[0-9a-f]{64})*$/);
    expect(new Set(before).size).toBe(4);
    // depChecksum over the very files the held result has.
    const snap = node.runner.snapshotOf(r1);
    expect(before).toEqual(
      await node.runner.engine.read(snap, (dir) =>
        Promise.all(specs.map((s) => depChecksum(dir, s))),
      ),
    );

    // A file none of the first two specs reads changes: a new result, the same digests for them;
    // the wildcard over every *.txt sees it.
    await writeFile(join(ctxDir, 'other.txt'), 'changed\n');
    await writeFile(join(ctxDir, 'sub', 'notes.md'), 'excluded, changed\n');
    const r2 = await snapshotContext(node);
    expect(r2).not.toBe(r1);
    const after = await digests(node.id, r2, specs);
    expect(after[0]).toBe(before[0]);
    expect(after[1]).toBe(before[1]);
    expect(after[2]).not.toBe(before[2]);
    expect(after[3]).toBe(before[3]);

    // The selected file changes: its digest does.
    await writeFile(join(ctxDir, 'hello.txt'), 'hello again\n');
    const r3 = await snapshotContext(node);
    const changed = await digests(node.id, r3, specs);
    expect(changed[0]).not.toBe(before[0]);
    expect(changed[1]).toBe(before[1]);
    expect(changed[3]).not.toBe(before[3]);
    // The older results still answer what they held (results are immutable).
    expect(await digests(node.id, r1, [specs[0]!])).toEqual([before[0]]);
  });

  it('memoizes per (result id, spec): asking again computes nothing', async () => {
    const r = await snapshotContext(node);
    const stats = node.checksums!.stats;
    const first = await digests(node.id, r, [spec(['/sub/a.txt'])]);
    const computed = stats.computed;
    const requests = stats.requests;
    // The same spec with its fields in another order is the same spec.
    const again = await ask(node.id, {
      resultId: r,
      deps: [
        {
          excludePatterns: [],
          includePatterns: [],
          followLinks: false,
          wildcard: false,
          selectors: ['/sub/a.txt'],
        },
      ],
    });
    expect(again).toEqual({ results: [{ digest: first[0] }] });
    expect(stats.requests).toBe(requests + 1);
    expect(stats.computed).toBe(computed);
    // Another spec over the same result is computed.
    await digests(node.id, r, [spec(['/sub/notes.md'])]);
    expect(stats.computed).toBe(computed + 1);
  });

  it('answers errors, typed, for an unknown result, a missing path and a malformed request', async () => {
    const r = await snapshotContext(node);
    expect(await ask(node.id, { resultId: 'sha256:0000', deps: [spec(['/hello.txt'])] })).toEqual({
      error: {
        code: 'CHECKSUM_RESULT_UNKNOWN',
        message: expect.stringContaining('sha256:0000') as string,
      },
    });
    const mixed = await ask(node.id, {
      resultId: r,
      deps: [spec(['/no-such-file']), spec(['/hello.txt'])],
    });
    expect(mixed).toMatchObject({
      results: [
        { error: { code: 'CHECKSUM_FAILED' } },
        { digest: expect.stringMatching(/^sha256:/) as string },
      ],
    });
    expect(await ask(node.id, new TextEncoder().encode('{not json'))).toMatchObject({
      error: { code: 'CHECKSUM_PROTOCOL' },
    });
    expect(await ask(node.id, { resultId: r, deps: [spec([])] })).toMatchObject({
      error: { code: 'CHECKSUM_PROTOCOL' },
    });
    // The empty filesystem needs no holder: every worker answers for it.
    expect(await digests(node.id, 'empty', [spec(['/'])])).toEqual([
      expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
    ]);
    // Still serving: nothing crashed.
    expect(await digests(node.id, r, [spec(['/hello.txt'])])).toHaveLength(1);
  });

  it('stops answering when the node drains (askers see no responders)', async () => {
    const other = await startNode('cs-b');
    const r = await snapshotContext(other);
    expect(await digests(other.id, r, [spec(['/hello.txt'])])).toHaveLength(1);
    await other.drain();
    const err = await nc
      .request(checksumSubject(other.id), encodeChecksumJson({ resultId: r, deps: [] }), {
        timeout: 10_000,
      })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(Error);
    expect((err as { isNoResponders?: () => boolean }).isNoResponders?.()).toBe(true);
  });
});
