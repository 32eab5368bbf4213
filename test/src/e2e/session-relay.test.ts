/**
 * The session relay end to end, byte for byte: a worker's end (`SessionRelay`, as a task uses it)
 * talks over a real nats-server to the scheduler's `ControlServer`, which relays to a client's
 * `BuildSession` over gRPC: a local directory (manifest, then only the files the store lacks), a
 * secret, and an ssh agent connection to a real unix socket on the client's side. The worker's
 * end connects as a worker user with the role's NATS permissions, the scheduler as the scheduler.
 * A worker reaches a session only for a task it holds the claim on: each case writes that claim's
 * record (as the scheduler does when it accepts a claim) and has the session serve its build.
 * A sniffer with the scheduler's (permissive) credentials listens to `>` in the secrecy case (only
 * there: it would be a responder to every request, and "no responders" is what a gone session is).
 */
import { createHash, randomUUID } from 'node:crypto';
import { readdir, readFile, readlink, lstat } from 'node:fs/promises';
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  rmSync,
  readFileSync,
  readlinkSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { createConnection, createServer } from 'node:net';
import type { Server } from 'node:net';
import { join } from 'node:path';
import { KilnClient } from '@kiln/client';
import type { BuildSession } from '@kiln/client';
import { ControlServer, Dispatcher } from '@kiln/scheduler';
import { FsBlobStore } from '@kiln/store';
import type { BlobSource, Digest, PutOptions } from '@kiln/store';
import { Engine, LocalContexts, SessionRelay } from '@kiln/worker';
import type { TaskClaim } from '@kiln/worker';
import {
  casRecord,
  connectNats,
  createRecord,
  encodeSessionJson,
  sessionKeyPair,
  sessionKeySubject,
  taskKey,
  workerInboxPrefix,
} from '@kiln/bus';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, startNats, waitFor } from '../harness/index.js';
import type { NatsServerHandle } from '../harness/index.js';

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
let nc: NatsConnection;
/** The worker's end: its own user, with the worker role's permissions. */
let wnc: NatsConnection;
/** Another worker of the farm (a rogue one). */
let xnc: NatsConnection;
/** Everything on the bus, seen with the scheduler's permissive credentials (while it listens). */
let sniffer: NatsConnection;
const sniffed: Buffer[] = [];
let dispatcher: Dispatcher;
let server: ControlServer;
let client: KilnClient;
let store: FsBlobStore;
/** What the scheduler put in the store besides manifests: the file contents that crossed the wire. */
const filesPut: string[] = [];
let agent: Server;
let agentPath: string;
const agentSaw: Buffer[] = [];

beforeAll(async () => {
  tmp = makeTempDir('session-relay');
  nats = await startNats({ auth: { workers: ['relay-w', 'relay-x'] } });
  if (!nats.auth) throw new Error('nats-server started without auth');
  nc = await connectNats(nats.url, nats.auth.scheduler);
  wnc = await connectNats(nats.url, {
    ...nats.auth.workers['relay-w'],
    inboxPrefix: workerInboxPrefix('relay-w'),
  });
  xnc = await connectNats(nats.url, {
    ...nats.auth.workers['relay-x'],
    inboxPrefix: workerInboxPrefix('relay-x'),
  });
  sniffer = await connectNats(nats.url, nats.auth.scheduler);
  dispatcher = await Dispatcher.start({ nc });
  store = new FsBlobStore({ root: join(tmp.dir, 'store') });
  // The scheduler's view of the store: counts the files it fetched from the client.
  const counting = Object.create(store) as FsBlobStore;
  counting.put = async (expected: Digest | undefined, src: BlobSource, o?: PutOptions) => {
    const chunks: Uint8Array[] = [];
    for await (const c of Buffer.isBuffer(src) ? [src] : src) chunks.push(c as Uint8Array);
    const body = Buffer.concat(chunks);
    // A single file, or a pack of small ones (their bytes back to back); not a manifest.
    if (!body.subarray(0, 11).equals(Buffer.from('{"entries":'))) filesPut.push(body.toString());
    return store.put(expected, body, o);
  };
  server = new ControlServer({ dispatcher, store: counting });
  const port = await server.listen('127.0.0.1:0');
  client = await KilnClient.connect(`127.0.0.1:${port}`);
  // A stand-in ssh agent: answers every message with "pong:" and what it got.
  agentPath = join(tmp.dir, 'agent.sock');
  agent = createServer((c) =>
    c.on('data', (d: Buffer) => {
      agentSaw.push(d);
      c.write(Buffer.concat([Buffer.from('pong:'), d]));
    }),
  );
  await new Promise<void>((r) => agent.listen(agentPath, r));
});

afterAll(async () => {
  client?.close();
  await server?.close();
  await dispatcher?.close();
  await wnc?.close();
  await xnc?.close();
  await sniffer?.close();
  await nc?.close();
  await nats?.stop();
  await new Promise<void>((r) => (agent ? agent.close(() => r()) : r()));
  // The 50,000-file context and its copies: removing them took up to 4 min on a loaded machine.
  tmp?.remove();
}, 600_000);

/** relay-w's end of the relay. */
function relay(workerId = 'relay-w'): SessionRelay {
  return new SessionRelay({
    nc: workerId === 'relay-w' ? wnc : xnc,
    workerId,
    store,
    tmpDir: join(tmp.dir, 'worker-tmp'),
  });
}

/** Opens a session and waits until the scheduler has it. */
async function openSession(o: Parameters<KilnClient['session']>[0]): Promise<BuildSession> {
  const s = client.session(o);
  await waitFor('the session to open', () => server.sessions.get(s.id));
  return s;
}

/**
 * A running task's record claimed by `holder`, of a build the session serves (`serve: false`: of
 * a build it does not serve): what the scheduler writes when it accepts a worker's claim.
 */
async function claim(
  session: BuildSession,
  o: { holder?: string; serve?: boolean } = {},
): Promise<TaskClaim> {
  const buildId = `build-${randomUUID()}`;
  const cacheKey = sha(buildId);
  const key = taskKey(cacheKey);
  const token = randomUUID();
  const now = Date.now();
  const created = await createRecord(dispatcher.bus.tasks, key, {
    v: 1,
    taskId: randomUUID(),
    cacheKey,
    platform: 'linux/amd64',
    attempt: 1,
    attemptToken: token,
    state: 'running',
    builds: [buildId],
    holder: o.holder ?? 'relay-w',
    task: '',
    createdAt: now,
    dispatchedAt: now,
    claimedAt: now,
  });
  if (created === false) throw new Error('record exists');
  if (o.serve !== false) server.sessions.get(session.id)!.serve(buildId);
  return { key, token };
}

/** Whether any message seen on the bus holds `needle`'s bytes, plain or base64. */
function sniffedHas(needle: string): boolean {
  const forms = [
    needle,
    Buffer.from(needle).toString('base64'),
    Buffer.from(needle).toString('base64url'),
  ];
  return sniffed.some((m) => forms.some((f) => m.includes(f)));
}

describe('the session relay: worker <-> nats <-> scheduler <-> gRPC <-> client', () => {
  it('syncs a local directory by manifest, with modes, owners, mtimes and symlinks, filtered', async () => {
    const ctx = join(tmp.dir, 'ctx');
    mkdirSync(join(ctx, 'sub'), { recursive: true });
    mkdirSync(join(ctx, 'node_modules'), { recursive: true });
    writeFileSync(join(ctx, 'a.txt'), 'alpha\n');
    writeFileSync(join(ctx, 'sub', 'run.sh'), '#!/bin/sh\n');
    chmodSync(join(ctx, 'sub', 'run.sh'), 0o750);
    writeFileSync(join(ctx, 'node_modules', 'big.js'), 'excluded\n');
    symlinkSync('a.txt', join(ctx, 'link'));
    const when = new Date('2024-02-03T04:05:06Z');
    utimesSync(join(ctx, 'a.txt'), when, when);
    const session = await openSession({ localDirs: { context: ctx } });
    const relay = new SessionRelay({
      nc: wnc,
      workerId: 'relay-w',
      store,
      tmpDir: join(tmp.dir, 'worker-tmp'),
    });
    const task = relay.open(session.id, await claim(session));
    try {
      const dir = await task.providers.syncLocal!({
        name: 'context',
        includePatterns: [],
        excludePatterns: ['node_modules'],
        followPaths: [],
      });
      expect(readFileSync(join(dir, 'a.txt'), 'utf8')).toBe('alpha\n');
      expect(statSync(join(dir, 'a.txt')).mtime.getTime()).toBe(when.getTime());
      expect(statSync(join(dir, 'sub', 'run.sh')).mode & 0o7777).toBe(0o750);
      expect(lstatSync(join(dir, 'link')).isSymbolicLink()).toBe(true);
      expect(readlinkSync(join(dir, 'link'))).toBe('a.txt');
      expect(() => statSync(join(dir, 'node_modules'))).toThrow();
      // The files went through the store by content.
      expect(filesPut.some((b) => b.includes('alpha\n'))).toBe(true);
      // A directory the client does not serve is a typed error, not a hang.
      await expect(
        task.providers.syncLocal!({
          name: 'other',
          includePatterns: [],
          excludePatterns: [],
          followPaths: [],
        }),
      ).rejects.toMatchObject({ code: 'LOCAL_NOT_FOUND' });
    } finally {
      await task.close();
      session.close();
    }
  });

  it('relays a secret on request, and says when the client has none', async () => {
    const value = `s3cret-${randomUUID()}`;
    const session = await openSession({
      secrets: (id) => Promise.resolve(id === 'tok' ? Buffer.from(value) : undefined),
    });
    const task = relay().open(session.id, await claim(session));
    try {
      expect(Buffer.from((await task.providers.secrets!('tok'))!).toString()).toBe(value);
      expect(await task.providers.secrets!('missing')).toBeUndefined();
    } finally {
      await task.close();
      session.close();
    }
  });

  it("relays an ssh agent connection byte for byte to the client's agent socket", async () => {
    const session = await openSession({ ssh: { default: agentPath } });
    const task = relay().open(session.id, await claim(session));
    try {
      const sock = (await task.providers.ssh!('default'))!;
      const reply = await new Promise<string>((resolve, reject) => {
        const c = createConnection(sock);
        let got = '';
        c.on('data', (d: Buffer) => {
          got += d.toString();
          if (got === 'pong:ping') {
            c.end();
            resolve(got);
          }
        });
        c.on('error', reject);
        c.write('ping');
      });
      expect(reply).toBe('pong:ping');
      expect(Buffer.concat(agentSaw).toString()).toContain('ping');
    } finally {
      await task.close();
      session.close();
    }
  });

  it('never shows a secret or ssh bytes on the bus; a worker without the claim gets nothing', async () => {
    const value = `s3cret-${randomUUID()}`;
    const session = await openSession({
      secrets: (id) => Promise.resolve(id === 'tok' ? Buffer.from(value) : undefined),
      ssh: { default: agentPath },
    });
    const held = await claim(session);
    const task = relay().open(session.id, held);
    const sniff = sniffer.subscribe('>', {
      callback: (err, m) => void (err || sniffed.push(Buffer.from(m.data))),
    });
    await sniffer.flush();
    try {
      expect(Buffer.from((await task.providers.secrets!('tok'))!).toString()).toBe(value);
      const sock = (await task.providers.ssh!('default'))!;
      const marker = `agent-bytes-${randomUUID()}`;
      await new Promise<void>((resolve, reject) => {
        const c = createConnection(sock);
        let got = '';
        c.on('data', (d: Buffer) => {
          got += d.toString();
          if (got === `pong:${marker}`) {
            c.end();
            resolve();
          }
        });
        c.on('error', reject);
        c.write(marker);
      });
      await sniffer.flush();
      expect(sniffed.length).toBeGreaterThan(0);
      expect(sniffedHas(value)).toBe(false);
      expect(sniffedHas(marker)).toBe(false);

      // Another worker presenting relay-w's claim, under its own id: refused.
      await expect(
        relay('relay-x').open(session.id, held).providers.secrets!('tok'),
      ).rejects.toMatchObject({ code: 'SESSION_DENIED' });
      // ...and it may not speak under relay-w's id at all.
      await expect(
        xnc.request(
          sessionKeySubject(session.id, 'relay-w'),
          encodeSessionJson({ ...held, publicKey: sessionKeyPair().publicKey }),
          { timeout: 2_000 },
        ),
      ).rejects.toThrow(/permission/i);
      // A claim of its own, on a task of a build this session does not serve: refused.
      const foreign = await claim(session, { holder: 'relay-x', serve: false });
      await expect(
        relay('relay-x').open(session.id, foreign).providers.secrets!('tok'),
      ).rejects.toMatchObject({ code: 'SESSION_DENIED' });
      // relay-w's own claim with a stale token: refused.
      await expect(
        relay().open(session.id, { ...held, token: randomUUID() }).providers.secrets!('tok'),
      ).rejects.toMatchObject({ code: 'SESSION_DENIED' });
      // The old subject by session id answers nothing.
      await expect(
        wnc.request(`kiln.session.${session.id}.secret`, encodeSessionJson({ id: 'tok' }), {
          timeout: 2_000,
        }),
      ).rejects.toThrow();
      await sniffer.flush();
      expect(sniffedHas(value)).toBe(false);
    } finally {
      sniff.unsubscribe();
      await task.close();
      session.close();
    }
  });

  it('stops answering a channel once its claim is gone (the attempt was re-dispatched)', async () => {
    const value = `s3cret-${randomUUID()}`;
    const session = await openSession({
      secrets: (id) => Promise.resolve(id === 'tok' ? Buffer.from(value) : undefined),
    });
    const held = await claim(session);
    const task = relay().open(session.id, held);
    try {
      expect(Buffer.from((await task.providers.secrets!('tok'))!).toString()).toBe(value);
      // The scheduler presumes relay-w dead and gives the task a new attempt.
      await casRecord(dispatcher.bus.tasks, held.key, (r) => ({
        ...r,
        state: 'queued',
        attemptToken: randomUUID(),
        attempt: r.attempt + 1,
      }));
      await expect(task.providers.secrets!('tok')).rejects.toMatchObject({
        code: 'SESSION_DENIED',
      });
    } finally {
      await task.close();
      session.close();
    }
  });

  it('fails typed when the session is gone', async () => {
    const task = relay().open(`gone-${randomUUID()}`, { key: 'sha256.00', token: randomUUID() });
    await expect(task.providers.secrets!('tok')).rejects.toMatchObject({
      code: 'SESSION_UNAVAILABLE',
    });
    await task.close();
  });
});

const sha = (s: string): string => `sha256:${createHash('sha256').update(s).digest('hex')}`;

/** Every path below `dir` (relative, sorted) with its type, mode and content or target. */
async function treeOf(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (abs: string, rel: string): Promise<void> => {
    for (const name of (await readdir(abs)).sort()) {
      const a = join(abs, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(a);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isDirectory()) {
        out.push(`${r}/ ${mode}`);
        await walk(a, r);
      } else if (st.isSymbolicLink()) out.push(`${r} -> ${await readlink(a)}`);
      else out.push(`${r} ${mode} ${st.mtimeMs} ${await readFile(a, 'utf8')}`);
    }
  };
  await walk(dir, '');
  return out;
}

describe('incremental contexts: the worker keeps each synced context and applies the difference', () => {
  let engine: Engine;
  let contexts: LocalContexts;
  const spec = {
    name: 'context',
    includePatterns: [],
    excludePatterns: ['ignored'],
    followPaths: [],
    sharedKeyHint: 'context',
  };

  beforeAll(async () => {
    const stateDir = join(tmp.dir, 'worker-state');
    engine = await Engine.open({ stateDir, store });
    contexts = await LocalContexts.open({
      stateDir,
      env: { snapshotter: engine.snapshotter, tmpDir: join(stateDir, 'tmp') },
      store,
    });
  });

  /** One build's sync: a new session (same shared key), a task's localSnapshot. */
  async function sync(ctx: string): Promise<{ snapshot: string; fetched: string[] }> {
    const session = await openSession({ localDirs: { context: ctx }, sharedKey: 'machine-1' });
    const relay = new SessionRelay({
      nc: wnc,
      workerId: 'relay-w',
      store,
      tmpDir: join(tmp.dir, 'worker-tmp'),
      contexts,
    });
    const task = relay.open(session.id, await claim(session));
    const before = filesPut.length;
    try {
      const snapshot = await task.providers.localSnapshot!(spec);
      return { snapshot, fetched: filesPut.slice(before) };
    } finally {
      await task.close();
      session.close();
    }
  }

  it('reuses the snapshot when nothing changed, and writes only the difference when something did', async () => {
    const ctx = join(tmp.dir, 'ctx-incremental');
    const t = new Date('2024-05-06T07:08:09Z');
    const file = (rel: string, body: string, mode = 0o644): void => {
      mkdirSync(join(ctx, rel, '..'), { recursive: true });
      writeFileSync(join(ctx, rel), body);
      chmodSync(join(ctx, rel), mode);
      utimesSync(join(ctx, rel), t, t);
    };
    file('a.txt', 'alpha\n');
    file('sub/run.sh', '#!/bin/sh\n', 0o750);
    file('gone.txt', 'bye\n');
    file('old/x.txt', 'x\n');
    file('ignored/big.bin', 'never sent\n');
    const big = 'b'.repeat(100_000); // above the pack limit: a blob of its own
    file('big.bin', big);
    symlinkSync('a.txt', join(ctx, 'link'));

    const first = await sync(ctx);
    expect(first.fetched.join('')).not.toContain('never sent');
    expect(first.fetched).toContain(big);
    expect(first.fetched.filter((b) => b !== big).join('')).toContain('alpha\n');
    const tree1 = await engine.read(first.snapshot, treeOf);
    expect(tree1).toContain(`a.txt 644 ${t.getTime()} alpha\n`);
    expect(tree1).toContain(`sub/run.sh 750 ${t.getTime()} #!/bin/sh\n`);
    expect(tree1).toContain('link -> a.txt');
    expect(tree1).toContain(`big.bin 644 ${t.getTime()} ${big}`);
    expect(tree1.some((l) => l.startsWith('ignored'))).toBe(false);

    // Nothing changed: the same snapshot, no file crosses the wire.
    const again = await sync(ctx);
    expect(again.snapshot).toBe(first.snapshot);
    expect(again.fetched).toEqual([]);

    // Content, mode, removal (file and directory), symlink target and a new nested file.
    file('a.txt', 'alpha 2\n');
    chmodSync(join(ctx, 'sub/run.sh'), 0o700);
    rmSync(join(ctx, 'gone.txt'));
    rmSync(join(ctx, 'old'), { recursive: true });
    rmSync(join(ctx, 'link'));
    symlinkSync('sub/run.sh', join(ctx, 'link'));
    file('new/deep/n.txt', 'new\n');
    const changed = await sync(ctx);
    expect(changed.snapshot).not.toBe(first.snapshot);
    // Only the two new contents crossed the wire (small files: one pack, in path order).
    expect(changed.fetched).toEqual(['alpha 2\nnew\n']);
    // Made on top of the previous copy: only the difference was written.
    expect(await engine.snapshotter.parentChain(changed.snapshot)).toContain(first.snapshot);
    const tree2 = await engine.read(changed.snapshot, treeOf);
    expect(tree2).toContain(`a.txt 644 ${t.getTime()} alpha 2\n`);
    expect(tree2).toContain(`sub/run.sh 700 ${t.getTime()} #!/bin/sh\n`);
    expect(tree2).toContain('link -> sub/run.sh');
    expect(tree2).toContain(`new/deep/n.txt 644 ${t.getTime()} new\n`);
    expect(tree2.some((l) => l.startsWith('gone.txt') || l.startsWith('old'))).toBe(false);
    // The same tree as a first sync of it makes, written in full by a worker without the copy.
    const fresh = await LocalContexts.open({
      stateDir: join(tmp.dir, 'worker-state-fresh'),
      env: { snapshotter: engine.snapshotter, tmpDir: join(tmp.dir, 'worker-state-fresh', 'tmp') },
      store,
    });
    const session = await openSession({ localDirs: { context: ctx }, sharedKey: '' });
    const task = new SessionRelay({
      nc,
      workerId: 'relay-w',
      store,
      tmpDir: join(tmp.dir, 'worker-tmp'),
      contexts: fresh,
    }).open(session.id, await claim(session));
    try {
      const full = await task.providers.localSnapshot!(spec);
      expect(full).not.toBe(changed.snapshot);
      expect(await engine.read(full, treeOf)).toEqual(tree2);
    } finally {
      await task.close();
      session.close();
    }
    // Its file digests are known from the manifest (content checksums read no file).
    const digests = await contexts.fileDigests(changed.snapshot);
    expect(digests?.get('/a.txt')).toEqual({ size: 8, digest: sha('alpha 2\n') });
  });

  it('streams a file list past the old one-message limit (50,000 files)', async () => {
    const ctx = join(tmp.dir, 'ctx-50k');
    const n = 50_000;
    for (let d = 0; d < n / 500; d++) {
      mkdirSync(join(ctx, `d${d}`), { recursive: true });
      for (let i = 0; i < 500; i++)
        writeFileSync(join(ctx, `d${d}`, `file-with-a-longish-name-${i}.txt`), `${d}/${i}\n`);
    }
    const { snapshot } = await sync(ctx);
    const count = await engine.read(snapshot, async (dir) => {
      let files = 0;
      for (const d of await readdir(dir)) files += (await readdir(join(dir, d))).length;
      return files;
    });
    expect(count).toBe(n);
    const body = await engine.read(snapshot, (dir) =>
      readFile(join(dir, 'd99', 'file-with-a-longish-name-499.txt'), 'utf8'),
    );
    expect(body).toBe('99/499\n');
  }, 600_000);
});
