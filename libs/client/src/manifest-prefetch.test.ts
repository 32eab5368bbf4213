// A context walked ahead of the farm's request (`SessionOptions.prefetch`): it answers the first
// request with the same directory and patterns, with the listing a walk at request time gives;
// any other request, a second one, or a walk past its bound walks afresh; nothing it saw may be
// read before a manifest listed it. Against a real gRPC server whose session handler is driven by
// the test (a scripted scheduler, named so: only the client's side is under test here; the
// scheduler's is in services/scheduler context-sync tests).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { control, controlService } from '@kiln/protocol';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { KilnClient } from './kiln-client.js';
import type { BuildSession, SessionOptions } from './session.js';

type SessionMessage = InstanceType<typeof control.SessionMessage>;
type Call = grpc.ServerDuplexStream<SessionMessage, SessionMessage>;

let server: grpc.Server;
let client: KilnClient;
let dir: string;
let ctx: string;
/** Session streams the scripted scheduler got, each with the messages it received. */
const calls: { call: Call; inbox: SessionMessage[]; waiters: (() => void)[] }[] = [];
const sessions: BuildSession[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-prefetch-'));
  ctx = join(dir, 'ctx');
  for (let d = 0; d < 5; d++) {
    mkdirSync(join(ctx, `d${d}`), { recursive: true });
    for (let f = 0; f < 20; f++) writeFileSync(join(ctx, `d${d}`, `f${f}.txt`), `${d}/${f}\n`);
  }
  writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\n');
  server = new grpc.Server();
  server.addService(controlService, {
    session: (call: Call) => {
      const c = { call, inbox: [] as SessionMessage[], waiters: [] as (() => void)[] };
      calls.push(c);
      call.on('data', (m: SessionMessage) => {
        c.inbox.push(m);
        for (const w of c.waiters.splice(0)) w();
      });
      call.on('end', () => call.end());
      call.on('error', () => undefined);
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) =>
      e ? reject(e) : resolve(p),
    ),
  );
  client = await KilnClient.connect(`127.0.0.1:${port}`);
});

afterEach(() => {
  for (const s of sessions.splice(0)) s.close();
});

afterAll(() => {
  client?.close();
  server?.forceShutdown();
  rmSync(dir, { recursive: true, force: true });
});

/** A session on the scripted scheduler; resolves once its hello arrived. */
async function open(o: SessionOptions): Promise<{ session: BuildSession; c: (typeof calls)[0] }> {
  const before = calls.length;
  const session = client.session({ localDirs: { context: ctx }, ...o });
  sessions.push(session);
  const c = await until(() => calls[before]);
  await until(() => c.inbox.find((m) => m.hello));
  return { session, c };
}

/** Waits for `f` to return something, re-checking at every message the server gets. */
async function until<T>(f: () => T | undefined, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise<void>((r) => {
      const t = setTimeout(r, 20);
      for (const c of calls) c.waiters.push(() => (clearTimeout(t), r()));
    });
  }
}

let nextId = 1;
/** Asks for a manifest; resolves with its paths once the last chunk arrived. */
async function manifest(
  c: (typeof calls)[0],
  req: { dir: string; excludePatterns?: string[]; includePatterns?: string[] },
): Promise<string[]> {
  const id = nextId++;
  c.call.write(control.SessionMessage.create({ id, manifestRequest: req }));
  const paths: string[] = [];
  let seen = 0;
  return until(() => {
    for (; seen < c.inbox.length; seen++) {
      const m = c.inbox[seen]!;
      if (Number(m.id) !== id) continue;
      if (m.error) throw new Error(`${m.error.code}: ${m.error.message}`);
      for (const e of m.manifest?.entries ?? []) paths.push(e.path ?? '');
      if (m.manifest && !m.manifest.more) return paths;
    }
    return undefined;
  });
}

/** The whole context's manifest entries as plain objects (path, digest, size). */
async function entries(
  c: (typeof calls)[0],
): Promise<{ path?: string | null; digest?: string | null; size: number }[]> {
  const id = nextId++;
  c.call.write(control.SessionMessage.create({ id, manifestRequest: { dir: 'context' } }));
  const out: { path?: string | null; digest?: string | null; size: number }[] = [];
  let seen = 0;
  return until(() => {
    for (; seen < c.inbox.length; seen++) {
      const m = c.inbox[seen]!;
      if (Number(m.id) !== id) continue;
      for (const e of m.manifest?.entries ?? [])
        out.push({ path: e.path, digest: e.digest, size: Number(e.size) });
      if (m.manifest && !m.manifest.more) return out;
    }
    return undefined;
  });
}

/** Asks for one file; resolves with its bytes, or the session error's code. */
async function file(c: (typeof calls)[0], path: string): Promise<string> {
  const id = nextId++;
  c.call.write(control.SessionMessage.create({ id, fileRequest: { dir: 'context', path } }));
  let data = '';
  let seen = 0;
  return until(() => {
    for (; seen < c.inbox.length; seen++) {
      const m = c.inbox[seen]!;
      if (Number(m.id) !== id) continue;
      if (m.error) return `error ${m.error.code}`;
      if (m.fileChunk) {
        data += Buffer.from(m.fileChunk.data ?? []).toString();
        if (m.fileChunk.eof) return data;
      }
    }
    return undefined;
  });
}

describe('a context walked ahead of its request', () => {
  const excludes = ['d1', '!d1/f3.txt'];

  it('answers the request with the same patterns, as a walk at request time would', async () => {
    const fresh = await open({});
    const expected = await manifest(fresh.c, { dir: 'context', excludePatterns: excludes });
    expect(fresh.session.prefetchHits).toBe(0);
    expect(expected).toContain('d1/f3.txt');
    expect(expected).not.toContain('d1/f4.txt');

    const ahead = await open({ prefetch: [{ dir: 'context', excludePatterns: excludes }] });
    expect(await manifest(ahead.c, { dir: 'context', excludePatterns: excludes })).toEqual(
      expected,
    );
    expect(ahead.session.prefetchHits).toBe(1);
  });

  it('is not used for other patterns, nor twice: a second request sees a new file', async () => {
    const { session, c } = await open({
      prefetch: [{ dir: 'context', excludePatterns: excludes }],
    });
    const all = await manifest(c, { dir: 'context' });
    expect(session.prefetchHits).toBe(0);
    expect(all).toContain('d1/f4.txt');

    expect(await manifest(c, { dir: 'context', excludePatterns: excludes })).not.toContain(
      'late.txt',
    );
    expect(session.prefetchHits).toBe(1);
    writeFileSync(join(ctx, 'late.txt'), 'late\n');
    try {
      expect(await manifest(c, { dir: 'context', excludePatterns: excludes })).toContain(
        'late.txt',
      );
      expect(session.prefetchHits).toBe(1);
    } finally {
      rmSync(join(ctx, 'late.txt'));
    }
  });

  it('serves no file before a manifest listed it', async () => {
    const { session, c } = await open({ prefetch: [{ dir: 'context' }] });
    expect(await file(c, 'd0/f0.txt')).toMatch(/^error /);
    expect(await manifest(c, { dir: 'context' })).toContain('d0/f0.txt');
    expect(session.prefetchHits).toBe(1);
    expect(await file(c, 'd0/f0.txt')).toBe('0/0\n');
  });

  it('hashes its files ahead when they are few, with the digests a request-time walk gives', async () => {
    const fresh = await open({});
    const want = await entries(fresh.c);
    expect(want.filter((e) => e.digest)).toHaveLength(101);
    const ahead = await open({ prefetch: [{ dir: 'context' }] });
    await until(() => (ahead.session.hashedAhead === 101 ? true : undefined));
    expect(await entries(ahead.c)).toEqual(want);
    expect(ahead.session.prefetchHits).toBe(1);
    // Past prefetchHashBytes the walk is done ahead, the hashing at the request.
    const later = await open({ prefetch: [{ dir: 'context' }], prefetchHashBytes: 100 });
    expect(await entries(later.c)).toEqual(want);
    expect([later.session.prefetchHits, later.session.hashedAhead]).toEqual([1, 0]);
  });

  it('gives up past its bound: the request walks afresh', async () => {
    const { session, c } = await open({
      prefetch: [{ dir: 'context' }],
      prefetchMaxEntries: 50,
    });
    const paths = await manifest(c, { dir: 'context' });
    expect(paths.filter((p) => p.endsWith('.txt'))).toHaveLength(100);
    expect(session.prefetchHits).toBe(0);
  });
});
