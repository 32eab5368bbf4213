// Names, the fencing rules, and compare-and-set against the harness's real nats-server.
import { randomUUID } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { formatPlatform, parsePlatform } from '@kiln/protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Bus } from './bus.js';
import { ensureTaskConsumer, openBus } from './bus.js';
import { taskConsumerName, taskKey, taskSubject } from './subjects.js';
import {
  attemptSuffixMatches,
  decodeTask,
  encodeAttemptTask,
  encodeJson,
  encodeResult,
  encodeTask,
  fromBase64,
  toBase64,
} from './codec.js';
import { TASK_LEN_HEADER } from './offer.js';
import {
  RecordRequestError,
  parseRecordRequest,
  recordRequestApplied,
  recordRequestRule,
} from './record-service.js';
import type { TaskRecord } from './task-record.js';
import {
  casRecord,
  claimRule,
  completeRule,
  createRecord,
  errorRule,
  getRecord,
  isCurrentAttempt,
  leaveRule,
  joinRule,
  recordFromHeaders,
  recordHeaderValues,
  redispatchRule,
  releaseRule,
} from './task-record.js';

function record(): TaskRecord {
  return redispatchRule(
    {
      v: 1,
      taskId: 't1',
      cacheKey: `sha256:${randomUUID().replace(/-/g, '')}`,
      platform: 'linux/amd64',
      attempt: 0,
      attemptToken: '',
      state: 'queued',
      builds: ['b1'],
      task: '',
      createdAt: 0,
      dispatchedAt: 0,
    },
    'native',
    undefined,
  );
}

describe('names', () => {
  it('builds platform subjects and consumers that never overlap', () => {
    expect(taskSubject({ os: 'linux', architecture: 'amd64' })).toBe('kiln.task.linux.amd64');
    expect(taskSubject({ os: 'linux', architecture: 'arm64', variant: 'v8' })).toBe(
      'kiln.task.linux.arm64',
    );
    expect(taskSubject({ os: 'linux', architecture: 'arm', variant: 'v7' })).toBe(
      'kiln.task.linux.arm.v7',
    );
    expect(taskSubject({ os: 'linux', architecture: 'arm64' }, true)).toBe(
      'kiln.task.linux.arm64.emulated',
    );
    expect(taskConsumerName({ os: 'linux', architecture: 'arm', variant: 'v7' }, true)).toBe(
      'kiln-task-linux-arm-v7-emu',
    );
    expect(formatPlatform(parsePlatform('Linux/ARM64/v8'))).toBe('linux/arm64');
    expect(() => parsePlatform('linux')).toThrow(/invalid platform/);
    expect(() => taskSubject({ os: 'linux', architecture: 'amd64.x' })).toThrow(/invalid/);
  });

  it('maps cache keys to valid KV keys', () => {
    expect(taskKey('sha256:abc123')).toBe('sha256.abc123');
    expect(taskKey('weird key:with spaces')).toMatch(/^b64\.[A-Za-z0-9_-]+$/);
  });
});

describe('fencing rules', () => {
  it('lets only the current token claim, and only its holder report', () => {
    const r = record();
    expect(claimRule(r, 'old-token', 'w1', false)).toBeUndefined();
    const claimed = claimRule(r, r.attemptToken, 'w1', false);
    expect(claimed).toMatchObject({ state: 'running', holder: 'w1' });
    if (!claimed) throw new Error('unreachable');
    expect(claimRule(claimed, r.attemptToken, 'w2', false)).toBeUndefined();
    expect(completeRule(claimed, r.attemptToken, 'w2', 'x')).toBeUndefined();
    expect(completeRule(claimed, r.attemptToken, 'w1', 'x')).toMatchObject({
      state: 'done',
      result: 'x',
    });
    // Presumed dead: a new attempt makes the old holder's token stale.
    const again = redispatchRule(claimed, 'native', undefined);
    expect(again.attempt).toBe(2);
    expect(again.attemptToken).not.toBe(r.attemptToken);
    expect(isCurrentAttempt(again, r.attemptToken)).toBe(false);
    expect(completeRule(again, r.attemptToken, 'w1', 'late')).toBeUndefined();
    expect(
      errorRule(
        again,
        r.attemptToken,
        'w1',
        { code: 'X', message: 'x', retryable: true },
        undefined,
      ),
    ).toBeUndefined();
    expect(releaseRule(again, r.attemptToken, 'w1')).toBeUndefined();
  });

  it('cancels only when the last build leaves', () => {
    const r = joinRule(record(), 'b2');
    if (!r) throw new Error('unreachable');
    const one = leaveRule(r, 'b1');
    expect(one).toMatchObject({ state: 'queued', builds: ['b2'] });
    if (!one) throw new Error('unreachable');
    expect(leaveRule(one, 'b2')).toMatchObject({ state: 'cancelled', builds: [] });
  });
});

describe('task copies', () => {
  const taskInit = {
    taskId: 't1',
    buildId: 'b1',
    cacheKey: 'sha256:abc',
    op: new Uint8Array([1, 2, 3]),
    platform: { OS: 'linux', Architecture: 'amd64' },
    inputs: [{ resultId: 'r1', holderWorker: 'w1' }],
  };

  it('appends the attempt fields to the clean task: it decodes as the full task', () => {
    const clean = encodeTask(taskInit);
    const body = encodeAttemptTask(clean, 'tok-1', 3);
    const full = decodeTask(body);
    expect(full.toJSON()).toEqual(
      decodeTask(encodeTask({ ...taskInit, attemptToken: 'tok-1', attempt: 3 })).toJSON(),
    );
    expect(attemptSuffixMatches(body, clean.length, full)).toBe(true);
    expect(attemptSuffixMatches(body, clean.length - 1, full)).toBe(false);
    expect(attemptSuffixMatches(body, body.length + 1, full)).toBe(false);
    const other = decodeTask(encodeAttemptTask(clean, 'tok-2', 3));
    expect(attemptSuffixMatches(body, clean.length, other)).toBe(false);
  });

  it('rebuilds the record from the headers, taking the clean task from the body', () => {
    const r = record();
    const clean = encodeTask(taskInit);
    const withTask = { ...r, cacheKey: 'sha256:abc', task: toBase64(clean) };
    const body = encodeAttemptTask(clean, r.attemptToken, r.attempt);
    const task = decodeTask(body);
    const h = new Map(recordHeaderValues(withTask, 7, clean.length));
    const get = (k: string): string => h.get(k) ?? '';
    expect(recordFromHeaders(get, task, body)).toEqual({ record: withTask, revision: 7 });
    // Without the length header, or a length that does not match: the task is encoded again.
    const norm = (b64: string | undefined): unknown => ({
      attemptToken: '',
      attempt: 0,
      ...decodeTask(fromBase64(b64 ?? '')).toJSON(),
    });
    const plain = new Map(recordHeaderValues(withTask, 7));
    const re = recordFromHeaders((k) => plain.get(k) ?? '', task, body);
    expect(norm(re?.record.task)).toEqual(norm(withTask.task));
    h.set(TASK_LEN_HEADER, String(clean.length - 2));
    const bad = recordFromHeaders(get, task, body);
    expect(norm(bad?.record.task)).toEqual(norm(withTask.task));
    // A copy of another attempt is not this record's.
    h.set(TASK_LEN_HEADER, String(clean.length));
    const stale = decodeTask(encodeAttemptTask(clean, 'other', r.attempt));
    expect(recordFromHeaders(get, stale, body)).toBeUndefined();
  });
});

// The record protocol's checks: what a worker may ask, for whom, and retried requests (the same
// protocol on a real nats-server with permissions: services/scheduler's bus-permissions.test.ts).
const result = (workerId: string, token: string): string =>
  toBase64(encodeResult({ taskId: 't1', attemptToken: token, workerId }));

describe('record requests', () => {
  it('refuses malformed requests with a typed error', () => {
    const bad = [
      'not json',
      JSON.stringify({ op: 'claim', key: 'a b', token: 't' }),
      JSON.stringify({ op: 'claim', key: 'k', token: '' }),
      JSON.stringify({ op: 'complete', key: 'k', token: 't' }),
      JSON.stringify({ op: 'error', key: 'k', token: 't', error: { code: 1 } }),
      JSON.stringify({ op: 'blobs', key: 'k', layers: [{ digest: 'sha256:zz' }] }),
      JSON.stringify({ op: 'rewrite', key: 'k', token: 't' }),
    ];
    for (const b of bad)
      expect(() => parseRecordRequest(new TextEncoder().encode(b)), b).toThrow(RecordRequestError);
  });

  it('applies a claim and a result for the identity of the subject only', () => {
    const r = record();
    const token = r.attemptToken;
    const claim = parseRecordRequest(encodeJson({ op: 'claim', key: 'k', token, emulated: false }));
    const claimed = recordRequestRule(claim, 'w1')(r);
    expect(claimed?.holder).toBe('w1');
    if (!claimed) throw new Error('not claimed');
    // Another worker's result for w1's claim: refused by the rule.
    const theirs = parseRecordRequest(
      encodeJson({ op: 'complete', key: 'k', token, result: result('w2', token) }),
    );
    expect(recordRequestRule(theirs, 'w2')(claimed)).toBeUndefined();
    // A result that names another worker than the one asking: refused outright.
    expect(() => recordRequestRule(theirs, 'w1')).toThrow(RecordRequestError);
    const mine = parseRecordRequest(
      encodeJson({ op: 'complete', key: 'k', token, result: result('w1', token) }),
    );
    const done = recordRequestRule(mine, 'w1')(claimed);
    expect(done?.state).toBe('done');
    if (!done) throw new Error('not done');
    // Nothing overwrites a finished record.
    expect(recordRequestRule(mine, 'w1')(done)).toBeUndefined();
  });

  it('tells a retried request that its first copy was applied (a lost reply)', () => {
    const r = record();
    const token = r.attemptToken;
    const claim = parseRecordRequest(encodeJson({ op: 'claim', key: 'k', token, emulated: false }));
    const claimed = recordRequestRule(claim, 'w1')(r);
    expect(recordRequestApplied(claim, 'w1', claimed)).toBe(true);
    expect(recordRequestApplied(claim, 'w2', claimed)).toBe(false);
    const mine = parseRecordRequest(
      encodeJson({ op: 'complete', key: 'k', token, result: result('w1', token) }),
    );
    const done = claimed && recordRequestRule(mine, 'w1')(claimed);
    expect(recordRequestApplied(mine, 'w1', done)).toBe(true);
    const other = parseRecordRequest(
      encodeJson({ op: 'complete', key: 'k', token, result: result('w1', 'other') }),
    );
    expect(recordRequestApplied(other, 'w1', done)).toBe(false);
  });
});

describe('on a real nats-server', () => {
  let nc: NatsConnection;
  let bus: Bus;
  beforeAll(async () => {
    const url = process.env.KILN_TEST_NATS_URL;
    if (!url) throw new Error('KILN_TEST_NATS_URL not set (run through vitest from the repo root)');
    nc = await connect({ servers: url });
    bus = await openBus(nc);
  });
  afterAll(async () => {
    await nc?.close();
  });

  it('creates a record once (dedup) and refuses a stale compare-and-set', async () => {
    const r = record();
    const key = taskKey(r.cacheKey);
    expect(await createRecord(bus.tasks, key, r)).toBeGreaterThan(0);
    expect(await createRecord(bus.tasks, key, record())).toBe(false);
    const stored = await getRecord(bus.tasks, key);
    if (!stored) throw new Error('record missing');
    const claimed = await casRecord(bus.tasks, key, (x) =>
      claimRule(x, r.attemptToken, 'w1', false),
    );
    expect(claimed.applied).toBe(true);
    // A writer still holding the old revision re-reads, and its rule then refuses.
    const late = await casRecord(
      bus.tasks,
      key,
      (x) => claimRule(x, r.attemptToken, 'w2', false),
      stored,
    );
    expect(late.applied).toBe(false);
    expect(late.record?.holder).toBe('w1');
  });

  it('applies a change refused on a stale known copy when the stored record accepts it', async () => {
    // The scheduler's watch may not have seen a claim yet when the claimant's report arrives.
    const r = record();
    const key = taskKey(r.cacheKey);
    await createRecord(bus.tasks, key, r);
    const queued = await getRecord(bus.tasks, key);
    if (!queued) throw new Error('record missing');
    const claim = await casRecord(bus.tasks, key, (x) => claimRule(x, r.attemptToken, 'w1', false));
    expect(claim.applied).toBe(true);
    const done = await casRecord(
      bus.tasks,
      key,
      (x) => completeRule(x, r.attemptToken, 'w1', 'result'),
      queued,
    );
    expect(done.applied).toBe(true);
    expect((await getRecord(bus.tasks, key))?.record).toMatchObject({
      state: 'done',
      result: 'result',
    });
  });

  it('changes the lifetime of an existing record bucket only when asked to', async () => {
    const info = async () => (await bus.jsm.streams.info('KV_kiln_tasks')).config.max_age;
    const before = await info();
    await openBus(nc, { recordTtlMs: 3_600_000 });
    expect(await info()).toBe(before);
    await openBus(nc, { recordTtlMs: 3_600_000, applyRecordTtl: true });
    expect(await info()).toBe(3_600_000 * 1_000_000);
    await openBus(nc, { recordTtlMs: before / 1_000_000, applyRecordTtl: true });
    expect(await info()).toBe(before);
  });

  it('creates the platform consumers idempotently', async () => {
    const a = await ensureTaskConsumer(bus, { os: 'linux', architecture: 'riscv64' }, false);
    const b = await ensureTaskConsumer(bus, { os: 'linux', architecture: 'riscv64' }, false);
    const c = await ensureTaskConsumer(bus, { os: 'linux', architecture: 'riscv64' }, true);
    expect(a.name).toBe(b.name);
    expect(c.config.filter_subject).toBe('kiln.task.linux.riscv64.emulated');
  });
});
