/**
 * The session relay end to end, byte for byte: a worker's end (`SessionRelay`, as a task uses it)
 * talks over a real nats-server to the scheduler's `ControlServer`, which relays to a client's
 * `BuildSession` over gRPC: a local directory (manifest, then only the files the store lacks), a
 * secret, and an ssh agent connection to a real unix socket on the client's side.
 */
import { randomUUID } from 'node:crypto';
import {
  chmodSync,
  lstatSync,
  mkdirSync,
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
import { SessionRelay } from '@kiln/worker';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, startNats } from '../harness/index.js';
import type { NatsServerHandle } from '../harness/index.js';

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
let nc: NatsConnection;
let dispatcher: Dispatcher;
let server: ControlServer;
let client: KilnClient;
let store: FsBlobStore;
let agent: Server;
let agentPath: string;
const agentSaw: Buffer[] = [];

beforeAll(async () => {
  tmp = makeTempDir('session-relay');
  nats = await startNats();
  nc = await connect({ servers: nats.url });
  dispatcher = await Dispatcher.start({ nc });
  store = new FsBlobStore({ root: join(tmp.dir, 'store') });
  server = new ControlServer({ dispatcher, store });
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
  await nc?.close();
  await nats?.stop();
  await new Promise<void>((r) => (agent ? agent.close(() => r()) : r()));
  tmp?.remove();
});

/** Opens a session and waits until the scheduler has it. */
async function openSession(o: Parameters<KilnClient['session']>[0]): Promise<BuildSession> {
  const s = client.session(o);
  await server.sessions.waitFor(s.id, 10_000);
  return s;
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
    const relay = new SessionRelay({ nc, store, tmpDir: join(tmp.dir, 'worker-tmp') });
    const task = relay.open(session.id);
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
      const digest = (await import('node:crypto'))
        .createHash('sha256')
        .update('alpha\n')
        .digest('hex');
      expect(await store.has(`sha256:${digest}`)).toBe(true);
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
    const task = new SessionRelay({ nc, store, tmpDir: join(tmp.dir, 'worker-tmp') }).open(
      session.id,
    );
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
    const task = new SessionRelay({ nc, store, tmpDir: join(tmp.dir, 'worker-tmp') }).open(
      session.id,
    );
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

  it('fails typed when the session is gone', async () => {
    const task = new SessionRelay({ nc, store, tmpDir: join(tmp.dir, 'worker-tmp') }).open(
      `gone-${randomUUID()}`,
    );
    await expect(task.providers.secrets!('tok')).rejects.toMatchObject({
      code: 'SESSION_UNAVAILABLE',
    });
    await task.close();
  });
});
