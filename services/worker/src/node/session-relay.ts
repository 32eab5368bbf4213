/**
 * The worker's end of the session relay (`@kiln/bus` session.ts): a task's secrets, ssh agents and
 * local directories come from the build's client through the scheduler that holds its session.
 *
 * Contract:
 * - `providers(sessionId)` gives one task its {@link SessionProviders}; `close()` of the returned
 *   handle removes what the task materialized (synced directories, ssh relay sockets).
 * - A local directory is synced by manifest: the scheduler puts every file the content store
 *   lacks into it and answers with the manifest blob; this side rebuilds the directory from the
 *   store (each blob verified on read), confined to a fresh temp dir (entries are checked: no
 *   absolute paths, no `..`).
 * - Secrets are read per request and never written anywhere but the exec's tmpfs.
 * - A session nobody answers for fails with SESSION_UNAVAILABLE (not retryable here: the client
 *   is gone, and with it the build).
 */
import { randomUUID } from 'node:crypto';
import {
  chmod,
  chown,
  lchown,
  lutimes,
  mkdir,
  mkdtemp,
  rm,
  symlink,
  utimes,
} from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import {
  SessionUnavailableError,
  decodeSessionJson,
  encodeSessionJson,
  sessionReplyError,
  sessionSubject,
  sshStreamSubject,
} from '@kiln/bus';
import type {
  LocalManifest,
  LocalSyncReply,
  LocalSyncRequest,
  SecretReply,
  SshOpenReply,
} from '@kiln/bus';
import { KilnError } from '@kiln/protocol';
import type { BlobStore, Digest } from '@kiln/store';
import type { NatsConnection } from '@nats-io/transport-node';
import type { SessionProviders } from '../solver/solver.js';
import type { LocalSpec } from '../sources/local/local-source.js';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

export interface SessionRelayOptions {
  nc: NatsConnection;
  store: BlobStore;
  /** Synced directories are made under it. */
  tmpDir: string;
  /** How long a local sync may take (the client may upload a large context). Default 10 min. */
  localTimeoutMs?: number;
  /** Default 30 s. */
  requestTimeoutMs?: number;
}

export interface TaskSession {
  providers: SessionProviders;
  close(): Promise<void>;
}

function isNoResponders(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | undefined;
  return e?.code === '503' || (typeof e?.message === 'string' && /no responders/i.test(e.message));
}

export class SessionRelay {
  readonly #o: SessionRelayOptions;

  constructor(o: SessionRelayOptions) {
    this.#o = o;
  }

  /** The session providers of one task of session `sessionId`. */
  open(sessionId: string): TaskSession {
    const cleanups: (() => Promise<void>)[] = [];
    const synced = new Map<string, Promise<string>>();
    const providers: SessionProviders = {
      syncLocal: (spec) => {
        const k = JSON.stringify(spec);
        let p = synced.get(k);
        if (!p) {
          p = this.#syncLocal(sessionId, spec, cleanups);
          synced.set(k, p);
        }
        return p;
      },
      secrets: (id) => this.#secret(sessionId, id),
      ssh: async (id) => {
        const relay = await SshRelay.listen(this.#o.nc, sessionId, id);
        cleanups.push(() => relay.close());
        return relay.path;
      },
    };
    return {
      providers,
      close: async () => {
        for (const c of cleanups.reverse()) await c().catch(() => undefined);
      },
    };
  }

  async #request<T>(
    sessionId: string,
    kind: 'local' | 'secret' | 'ssh',
    body: unknown,
    what: string,
    timeout: number,
  ): Promise<T> {
    try {
      const msg = await this.#o.nc.request(
        sessionSubject(sessionId, kind),
        encodeSessionJson(body),
        { timeout },
      );
      return decodeSessionJson<T>(msg.data);
    } catch (err) {
      if (err instanceof KilnError) throw err;
      if (isNoResponders(err)) throw new SessionUnavailableError(sessionId, what, err);
      throw new KilnError('SESSION_TIMEOUT', `the client session did not answer for ${what}`, {
        cause: err,
        retryable: true,
        details: { sessionId },
      });
    }
  }

  async #secret(sessionId: string, id: string): Promise<Uint8Array | undefined> {
    const r = await this.#request<SecretReply>(
      sessionId,
      'secret',
      { id },
      `secret "${id}"`,
      this.#o.requestTimeoutMs ?? 30_000,
    );
    if ('error' in r) throw sessionReplyError(r.error);
    if ('notFound' in r) return undefined;
    return Buffer.from(r.data, 'base64');
  }

  async #syncLocal(
    sessionId: string,
    spec: LocalSpec,
    cleanups: (() => Promise<void>)[],
  ): Promise<string> {
    const req: LocalSyncRequest = {
      dir: spec.name,
      includePatterns: spec.includePatterns,
      excludePatterns: spec.excludePatterns,
      followPaths: spec.followPaths,
    };
    const r = await this.#request<LocalSyncReply>(
      sessionId,
      'local',
      req,
      `local "${spec.name}"`,
      this.#o.localTimeoutMs ?? 600_000,
    );
    if ('error' in r) throw sessionReplyError(r.error);
    const manifest = await readJsonBlob<LocalManifest>(this.#o.store, r.manifest as Digest);
    await mkdir(this.#o.tmpDir, { recursive: true });
    const root = await mkdtemp(join(this.#o.tmpDir, 'session-local-'));
    cleanups.push(() => rm(root, { recursive: true, force: true }));
    await materialize(this.#o.store, manifest, root);
    return root;
  }
}

async function readJsonBlob<T>(store: BlobStore, digest: Digest): Promise<T> {
  const chunks: Buffer[] = [];
  for await (const c of await store.get(digest)) chunks.push(c as Buffer);
  return decodeSessionJson<T>(Buffer.concat(chunks));
}

function safeRel(p: string): string {
  const parts = p.split('/');
  if (p === '' || p.startsWith('/') || parts.some((s) => s === '..' || s === '.' || s === '')) {
    throw new KilnError('SESSION_PROTOCOL', `the client's manifest names an unsafe path: ${p}`);
  }
  return p;
}

/** Rebuilds a manifest's tree under `root` from the store. */
async function materialize(store: BlobStore, m: LocalManifest, root: string): Promise<void> {
  const dirs: { path: string; mode: number; mtime: Date }[] = [];
  for (const e of m.entries) {
    const dest = join(root, safeRel(e.path));
    const type = e.mode & S_IFMT;
    await mkdir(dirname(dest), { recursive: true });
    if (type === S_IFDIR) {
      await mkdir(dest, { recursive: true });
      await chown(dest, e.uid, e.gid);
      dirs.push({ path: dest, mode: e.mode & 0o7777, mtime: new Date(e.mtimeMs) });
    } else if (type === S_IFREG) {
      if (!e.digest) throw new KilnError('SESSION_PROTOCOL', `file ${e.path} has no digest`);
      await pipeline(await store.get(e.digest as Digest), createWriteStream(dest, { mode: 0o600 }));
      await chown(dest, e.uid, e.gid);
      await chmod(dest, e.mode & 0o7777);
      await utimes(dest, new Date(e.mtimeMs), new Date(e.mtimeMs));
    } else if (type === S_IFLNK) {
      await symlink(e.linkname ?? '', dest);
      await lchown(dest, e.uid, e.gid);
      await lutimes(dest, new Date(e.mtimeMs), new Date(e.mtimeMs));
    }
    // Other types (sockets, devices, fifos) are not part of a build context, as in fsutil.
  }
  // Modes and times last, deepest first: writing entries changes a directory's mtime, and a
  // read-only directory must not stop its own entries from being written.
  for (const d of dirs.reverse()) {
    await chmod(d.path, d.mode);
    await utimes(d.path, d.mtime, d.mtime);
  }
}

/**
 * A unix socket standing in for the client's ssh agent: each connection to it is one relayed
 * agent connection through the session.
 */
class SshRelay {
  private constructor(
    readonly path: string,
    private readonly dir: string,
    private readonly server: Server,
    private readonly conns: Set<Socket>,
  ) {}

  static async listen(nc: NatsConnection, sessionId: string, id: string): Promise<SshRelay> {
    // unix socket paths are short (108 bytes): keep them in the system temp dir
    const dir = await mkdtemp(join(tmpdir(), 'kiln-sshrelay-'));
    const path = join(dir, 'agent.sock');
    const conns = new Set<Socket>();
    const server = createServer((sock) => {
      conns.add(sock);
      sock.on('close', () => conns.delete(sock));
      void relayConnection(nc, sessionId, id, sock);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    return new SshRelay(path, dir, server, conns);
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
    await rm(this.dir, { recursive: true, force: true });
  }
}

async function relayConnection(
  nc: NatsConnection,
  sessionId: string,
  id: string,
  sock: Socket,
): Promise<void> {
  const stream = randomUUID();
  const up = sshStreamSubject(sessionId, stream, 'up');
  const down = nc.subscribe(sshStreamSubject(sessionId, stream, 'down'));
  let closed = false;
  const close = (): void => {
    if (closed) return;
    closed = true;
    down.unsubscribe();
    nc.publish(up, new Uint8Array(0));
    sock.destroy();
  };
  sock.on('close', close);
  sock.on('error', close);
  sock.pause();
  try {
    const msg = await nc.request(
      sessionSubject(sessionId, 'ssh'),
      encodeSessionJson({ id, stream }),
      { timeout: 30_000 },
    );
    const r = decodeSessionJson<SshOpenReply>(msg.data);
    if ('error' in r) throw sessionReplyError(r.error);
  } catch {
    close();
    return;
  }
  sock.on('data', (d: Buffer) => nc.publish(up, d));
  sock.resume();
  for await (const m of down) {
    if (m.data.length === 0) break;
    sock.write(m.data);
  }
  sock.end();
  close();
}
