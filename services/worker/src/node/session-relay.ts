/**
 * The worker's end of the session relay (`@kiln/bus` session.ts): a task's secrets, ssh agents and
 * local directories come from the build's client through the scheduler that holds its session.
 *
 * Contract:
 * - `providers(sessionId)` gives one task its {@link SessionProviders}; `close()` of the returned
 *   handle removes what the task materialized (synced directories, ssh relay sockets).
 * - A local directory is synced by manifest: the scheduler puts every file the content store
 *   lacks into it and answers with the manifest blob (and the client's shared key); this side
 *   makes the tree from the store (each blob verified on read, the manifest validated first:
 *   `manifest-tree.ts`). With the worker's kept contexts (`localSnapshot`) it is a committed
 *   snapshot made from the difference to the same context's previous copy, or that copy itself
 *   when nothing changed (`local-contexts.ts`); else (`syncLocal`) a fresh temp dir.
 * - Secrets are read per request and never written anywhere but the exec's tmpfs.
 * - A session nobody answers for fails with SESSION_UNAVAILABLE (not retryable here: the client
 *   is gone, and with it the build).
 */
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
import type { SessionProviders } from '../ops/executor.js';
import { contextKey } from '../sources/local/local-contexts.js';
import type { LocalContexts } from '../sources/local/local-contexts.js';
import type { LocalSpec } from '../sources/local/local-source.js';
import { writeManifestTree } from '../sources/local/manifest-tree.js';

export interface SessionRelayOptions {
  nc: NatsConnection;
  store: BlobStore;
  /** Synced directories are made under it. */
  tmpDir: string;
  /** How long a local sync may take (the client may upload a large context). Default 10 min. */
  localTimeoutMs?: number;
  /** Default 30 s. */
  requestTimeoutMs?: number;
  /**
   * The worker's kept contexts: with it, tasks get `localSnapshot` (the synced directory as a
   * committed snapshot, made from the difference to the context's previous copy).
   */
  contexts?: LocalContexts;
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
      ...(this.#o.contexts
        ? {
            localSnapshot: async (spec: LocalSpec) => {
              const contexts = this.#o.contexts!;
              const r = await this.#requestManifest(sessionId, spec, contexts.base(spec));
              const key = r.sharedKey ? contextKey(r.sharedKey, spec) : undefined;
              return (await contexts.snapshot(r.manifest, key, spec)).snapshot;
            },
          }
        : {}),
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

  /** Has the scheduler sync the directory into the store; the manifest blob and shared key. */
  async #requestManifest(
    sessionId: string,
    spec: LocalSpec,
    base?: string,
  ): Promise<{ manifest: string; sharedKey?: string }> {
    const req: LocalSyncRequest = {
      dir: spec.name,
      includePatterns: spec.includePatterns,
      excludePatterns: spec.excludePatterns,
      followPaths: spec.followPaths,
      ...(base ? { base } : {}),
    };
    const r = await this.#request<LocalSyncReply>(
      sessionId,
      'local',
      req,
      `local "${spec.name}"`,
      this.#o.localTimeoutMs ?? 600_000,
    );
    if ('error' in r) throw sessionReplyError(r.error);
    return r;
  }

  async #syncLocal(
    sessionId: string,
    spec: LocalSpec,
    cleanups: (() => Promise<void>)[],
  ): Promise<string> {
    const r = await this.#requestManifest(sessionId, spec);
    const manifest = await readJsonBlob<LocalManifest>(this.#o.store, r.manifest as Digest);
    await mkdir(this.#o.tmpDir, { recursive: true });
    const root = await mkdtemp(join(this.#o.tmpDir, 'session-local-'));
    cleanups.push(() => rm(root, { recursive: true, force: true }));
    await writeManifestTree(this.#o.store, manifest, root);
    return root;
  }
}

async function readJsonBlob<T>(store: BlobStore, digest: Digest): Promise<T> {
  const chunks: Buffer[] = [];
  for await (const c of await store.get(digest)) chunks.push(c as Buffer);
  return decodeSessionJson<T>(Buffer.concat(chunks));
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
