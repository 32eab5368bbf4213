// The bus as an attacker finds it on a farm run with credentials and the role permissions
// (`@kiln/bus` nats-permissions.ts): a real nats-server with the generated users, the real
// Dispatcher (which alone writes task records) and a real worker process. Each attack of issue 11
// that concerns NATS is a case here; each must fail.
import { randomUUID } from 'node:crypto';
import {
  NatsConnectError,
  RecordClient,
  TASKS_BUCKET,
  WORKERS_BUCKET,
  connectNats,
  encodeRecord,
  encodeResult,
  getRecord,
  taskKey,
  toBase64,
  workerInboxPrefix,
} from '@kiln/bus';
import type { TaskInit, TaskRecord } from '@kiln/bus';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher } from './dispatcher.js';
import type { DispatchEvent } from './events.js';
import { bundleWorkerCli, spawnWorker } from '../test-support/workers.js';
import type { WorkerProcess } from '../test-support/workers.js';
import { makeTempDir, natsAuthEnv, startNats, testTask, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';

let nats: NatsServerHandle;
let tmp: { dir: string; remove: () => void };
let nc: NatsConnection;
let d: Dispatcher;
let worker: WorkerProcess;
const events: DispatchEvent[] = [];
const conns: NatsConnection[] = [];

function auth() {
  if (!nats.auth) throw new Error('nats started without auth');
  return nats.auth;
}

/** A bare NATS client with a worker's credentials (what a compromised or rogue worker holds). */
async function asWorker(id: string): Promise<NatsConnection> {
  const c = await connectNats(nats.url, {
    ...auth().workers[id],
    inboxPrefix: workerInboxPrefix(id),
  });
  conns.push(c);
  return c;
}

async function recordOf(t: TaskInit): Promise<TaskRecord | undefined> {
  return (await getRecord(d.bus.tasks, taskKey(t.cacheKey ?? '')))?.record;
}

/** Resolves with the error that closes a subscription (a permissions violation), or undefined. */
async function subscribeError(c: NatsConnection, subject: string): Promise<unknown> {
  const sub = c.subscribe(subject);
  const closed = await Promise.race([
    sub.closed.then((e) => e ?? 'closed'),
    c
      .flush()
      .then(() => c.flush())
      .then(() => undefined),
  ]);
  if (closed === undefined) {
    // Not closed after the server answered two PINGs: wait for the close the server's -ERR causes.
    return waitFor(`the subscription to ${subject} to be refused`, () =>
      sub.isClosed() ? sub.closed.then((e) => e ?? 'closed') : undefined,
    );
  }
  return closed;
}

beforeAll(async () => {
  tmp = makeTempDir('bus-permissions');
  let cli: string;
  [nats, cli] = await Promise.all([
    startNats({ auth: { workers: ['perm-a', 'perm-b'] } }),
    bundleWorkerCli(tmp.dir),
  ]);
  nc = await connectNats(nats.url, auth().scheduler);
  d = await Dispatcher.start({ nc, heartbeatTimeoutMs: 1_500, onEvent: (e) => events.push(e) });
  worker = await spawnWorker(cli, nats.url, {
    id: 'perm-a',
    platforms: 'linux/amd64',
    slots: 2,
    env: natsAuthEnv(auth().workers['perm-a']),
  });
  await waitFor('the dispatcher to see perm-a', () =>
    d.liveWorkers().some((w) => w.id === 'perm-a'),
  );
});

afterAll(async () => {
  await worker?.proc.stop(5_000);
  await Promise.all(conns.map((c) => c.close()));
  await d?.close();
  await nc?.close();
  await nats?.stop();
  tmp?.remove();
});

describe('a farm whose bus has credentials and role permissions', () => {
  it('refuses anonymous clients and wrong passwords with a typed one-line error', async () => {
    const anon = await connectNats(nats.url, {}, { maxReconnectAttempts: 0 }).catch(
      (e: unknown) => e,
    );
    expect(anon).toBeInstanceOf(NatsConnectError);
    expect((anon as NatsConnectError).code).toBe('BUS_AUTH');
    const wrong = await connectNats(
      nats.url,
      { user: 'kiln-scheduler', password: 'not-the-password' },
      { maxReconnectAttempts: 0 },
    ).catch((e: unknown) => e);
    expect((wrong as NatsConnectError).code).toBe('BUS_AUTH');
    expect((wrong as Error).message).toMatch(/refused the credentials \(user kiln-scheduler\)/);
    expect((wrong as Error).message).not.toContain('\n');
  });

  it('runs a task end to end: the worker claims and reports through the scheduler', async () => {
    const t = testTask({ output: 'fine' });
    const r = await d.submit(t);
    expect(r.workerId).toBe('perm-a');
    const rec = await recordOf(t);
    expect(rec?.state).toBe('done');
    expect(rec?.holder).toBe('perm-a');
  });

  it('a worker-role client cannot overwrite a finished record', async () => {
    const t = testTask({ output: 'genuine' });
    await d.submit(t);
    const key = taskKey(t.cacheKey ?? '');
    const before = await getRecord(d.bus.tasks, key);
    if (!before) throw new Error('no record');
    const c = await asWorker('perm-a');
    const kv = await new Kvm(jetstream(c)).open(TASKS_BUCKET);
    // It may read the record (to check that its attempt is current)...
    expect((await kv.get(key))?.revision).toBe(before.revision);
    // ...but neither a plain put nor a compare-and-set gets through.
    const forged = encodeRecord({ ...before.record, result: 'forged' });
    await expect(kv.put(key, forged)).rejects.toThrow(/permission/i);
    await expect(kv.update(key, forged, before.revision)).rejects.toThrow(/permission/i);
    await expect(kv.delete(key)).rejects.toThrow(/permission/i);
    // The holder itself cannot report again over its finished record.
    const again = toBase64(
      encodeResult({
        taskId: t.taskId,
        attemptToken: before.record.attemptToken,
        workerId: 'perm-a',
      }),
    );
    expect(
      await new RecordClient(c, 'perm-a').request({
        op: 'complete',
        key,
        token: before.record.attemptToken,
        result: again,
      }),
    ).toBe(false);
    const after = await getRecord(d.bus.tasks, key);
    expect(after?.revision).toBe(before.revision);
    expect(after?.record.result).toBe(before.record.result);
  });

  it('a result from a worker that does not hold the claim is refused', async () => {
    const t = testTask({ sleepMs: 60_000 });
    const abort = new AbortController();
    const running = d.submit(t, { signal: abort.signal }).catch((e: unknown) => e);
    const rec = await waitFor('perm-a to claim', async () => {
      const r = await recordOf(t);
      return r?.state === 'running' ? r : undefined;
    });
    expect(rec.holder).toBe('perm-a');
    const key = taskKey(t.cacheKey ?? '');
    const forged = (workerId: string) =>
      toBase64(encodeResult({ taskId: t.taskId, attemptToken: rec.attemptToken, workerId }));
    const b = await asWorker('perm-b');
    // perm-b knows the token (records are readable) and reports as itself: not the holder.
    const refused = new RecordClient(b, 'perm-b');
    expect(
      await refused.request({
        op: 'complete',
        key,
        token: rec.attemptToken,
        result: forged('perm-b'),
      }),
    ).toBe(false);
    // Nor may it claim the result is perm-a's, on its own subject...
    await expect(
      refused.request({ op: 'complete', key, token: rec.attemptToken, result: forged('perm-a') }),
    ).rejects.toMatchObject({ code: 'RECORD_REQUEST_INVALID' });
    // ...or speak on perm-a's subject: the server refuses the publish.
    await expect(
      new RecordClient(b, 'perm-a', undefined, 2_000).request({
        op: 'complete',
        key,
        token: rec.attemptToken,
        result: forged('perm-a'),
      }),
    ).rejects.toThrow(/permission/i);
    const still = await recordOf(t);
    expect(still?.state).toBe('running');
    expect(still?.holder).toBe('perm-a');
    expect(events).toContainEqual(
      expect.objectContaining({ type: 'record-refused', workerId: 'perm-b', op: 'complete' }),
    );
    abort.abort();
    await running;
  });

  it("a worker cannot listen to the whole bus, the sessions or another's inbox", async () => {
    const b = await asWorker('perm-b');
    for (const subject of [
      '>',
      'kiln.>',
      'kiln.session.>',
      `kiln.session.${randomUUID()}.secret`,
      '_INBOX.>',
      `${workerInboxPrefix('perm-a')}.>`,
      'kiln.offer.perm-a',
      'kiln.record.*',
      `$KV.${TASKS_BUCKET}.>`,
    ]) {
      const err = await subscribeError(b, subject);
      expect(String(err), subject).toMatch(/permission/i);
    }
  });

  it("a worker cannot write another worker's registration", async () => {
    const b = await asWorker('perm-b');
    const kv = await new Kvm(jetstream(b)).open(WORKERS_BUCKET);
    await expect(kv.put('perm-a', new TextEncoder().encode('{}'))).rejects.toThrow(/permission/i);
    await expect(kv.delete('perm-a')).rejects.toThrow(/permission/i);
  });
});
