/**
 * The worker's end of the session relay (`@kiln/bus` session.ts): a task's secrets, ssh agents and
 * local directories come from the build's client through the scheduler that holds its session.
 *
 * Contract:
 * - `open(sessionId, claim)` gives one claimed task its {@link SessionProviders}; `close()` of the
 *   returned handle removes what the task materialized (synced directories, ssh relay sockets)
 *   and closes its channel.
 * - The first use opens the task's channel to the session: the worker sends a fresh X25519 public
 *   key with the task's record key and claimed token; the scheduler holding the session checks the
 *   claim and answers with its key and the channel's capability (sealed). Every request and reply
 *   after that, and the ssh bytes, are sealed with the channel's keys (`@kiln/bus`
 *   session-crypto.ts): nothing of a session crosses the bus in clear.
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
  SessionCipher,
  SessionUnavailableError,
  assertSessionCapability,
  decodeSessionJson,
  encodeSessionJson,
  sessionKeyPair,
  sessionKeySubject,
  sessionReplyError,
  sessionSubject,
  sshDownSubject,
  sshUpSubject,
} from '@kiln/bus';
import type {
  AuthReply,
  LocalManifest,
  LocalSyncReply,
  LocalSyncRequest,
  SecretReply,
  SessionKeyReply,
  SessionSubjectKind,
  SshOpenReply,
} from '@kiln/bus';
import { KilnError } from '@kiln/protocol';
import type { BlobStore, Digest } from '@kiln/store';
import type { NatsConnection } from '@nats-io/transport-node';
import type { RegistryCredentials } from '@kiln/registry';
import type { SessionProviders } from '../ops/executor.js';
import { contextKey } from '../sources/local/local-contexts.js';
import type { LocalContexts } from '../sources/local/local-contexts.js';
import type { LocalSpec } from '../sources/local/local-source.js';
import { writeManifestTree } from '../sources/local/manifest-tree.js';

export interface SessionRelayOptions {
  nc: NatsConnection;
  /** This worker's id: the channel is asked for under it, and ssh bytes come to its inbox. */
  workerId: string;
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

/** The claim a task's session channel is opened under: its record key and attempt token. */
export interface TaskClaim {
  key: string;
  token: string;
}

/** An open channel of one task to its session. */
interface Channel {
  sessionId: string;
  capability: string;
  cipher: SessionCipher;
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

  /** The session providers of one task of session `sessionId`, which holds `claim`. */
  open(sessionId: string, claim: TaskClaim): TaskSession {
    const cleanups: (() => Promise<void>)[] = [];
    const synced = new Map<string, Promise<string>>();
    let opened: Promise<Channel> | undefined;
    const channel = (what: string): Promise<Channel> => {
      if (!opened) {
        opened = this.#openChannel(sessionId, claim, what);
        // A failed open is not kept: the next use asks again.
        opened.catch(() => (opened = undefined));
      }
      return opened;
    };
    const providers: SessionProviders = {
      syncLocal: (spec) => {
        const k = JSON.stringify(spec);
        let p = synced.get(k);
        if (!p) {
          p = this.#syncLocal(channel, spec, cleanups);
          synced.set(k, p);
        }
        return p;
      },
      ...(this.#o.contexts
        ? {
            localSnapshot: async (spec: LocalSpec) => {
              const contexts = this.#o.contexts!;
              const r = await this.#requestManifest(channel, spec, contexts.base(spec));
              const key = r.sharedKey ? contextKey(r.sharedKey, spec) : undefined;
              return (await contexts.snapshot(r.manifest, key, spec)).snapshot;
            },
          }
        : {}),
      secrets: (id) => this.#secret(channel, id),
      credentials: (host) => this.#credentials(channel, host),
      ssh: async (id) => {
        const ch = await channel(`ssh "${id}"`);
        const relay = await SshRelay.listen(this.#o.nc, this.#o.workerId, ch, id);
        cleanups.push(() => relay.close());
        return relay.path;
      },
    };
    return {
      providers,
      close: async () => {
        for (const c of cleanups.reverse()) await c().catch(() => undefined);
        const ch = await opened?.catch(() => undefined);
        if (ch)
          this.#o.nc.publish(
            sessionSubject(ch.capability, 'close'),
            ch.cipher.seal('close', new Uint8Array(0)),
          );
      },
    };
  }

  /** Asks the session's scheduler for a channel under this task's claim. */
  async #openChannel(sessionId: string, claim: TaskClaim, what: string): Promise<Channel> {
    const own = sessionKeyPair();
    let r: SessionKeyReply;
    try {
      const msg = await this.#o.nc.request(
        sessionKeySubject(sessionId, this.#o.workerId),
        encodeSessionJson({ key: claim.key, token: claim.token, publicKey: own.publicKey }),
        { timeout: this.#o.requestTimeoutMs ?? 30_000 },
      );
      r = decodeSessionJson<SessionKeyReply>(msg.data);
    } catch (err) {
      throw this.#requestError(err, sessionId, what);
    }
    if ('error' in r) throw sessionReplyError(r.error);
    const cipher = SessionCipher.derive(own, 'worker', {
      sessionId,
      workerId: this.#o.workerId,
      key: claim.key,
      token: claim.token,
      workerPublicKey: own.publicKey,
      schedulerPublicKey: r.publicKey,
    });
    const capability = assertSessionCapability(
      cipher.open('capability', Buffer.from(r.capability, 'base64')).toString(),
    );
    return { sessionId, capability, cipher };
  }

  #requestError(err: unknown, sessionId: string, what: string): KilnError {
    if (err instanceof KilnError) return err;
    if (isNoResponders(err)) return new SessionUnavailableError(sessionId, what, err);
    return new KilnError('SESSION_TIMEOUT', `the client session did not answer for ${what}`, {
      cause: err,
      retryable: true,
      details: { sessionId },
    });
  }

  async #request<T>(
    channel: (what: string) => Promise<Channel>,
    kind: Exclude<SessionSubjectKind, 'close'>,
    body: unknown,
    what: string,
    timeout: number,
  ): Promise<T> {
    const ch = await channel(what);
    let data: Uint8Array;
    try {
      const msg = await this.#o.nc.request(
        sessionSubject(ch.capability, kind),
        ch.cipher.seal(kind, encodeSessionJson(body)),
        { timeout },
      );
      data = msg.data;
    } catch (err) {
      throw this.#requestError(err, ch.sessionId, what);
    }
    return decodeSessionJson<T>(ch.cipher.open(`${kind}.reply`, data));
  }

  async #secret(
    channel: (what: string) => Promise<Channel>,
    id: string,
  ): Promise<Uint8Array | undefined> {
    const r = await this.#request<SecretReply>(
      channel,
      'secret',
      { id },
      `secret "${id}"`,
      this.#o.requestTimeoutMs ?? 30_000,
    );
    if ('error' in r) throw sessionReplyError(r.error);
    if ('notFound' in r) return undefined;
    return Buffer.from(r.data, 'base64');
  }

  /** The build's client's registry credentials for `host`, or undefined when it has none. */
  async #credentials(
    channel: (what: string) => Promise<Channel>,
    host: string,
  ): Promise<RegistryCredentials | undefined> {
    const r = await this.#request<AuthReply>(
      channel,
      'auth',
      { host },
      `registry credentials for ${host}`,
      this.#o.requestTimeoutMs ?? 30_000,
    );
    if ('error' in r) throw sessionReplyError(r.error);
    if ('notFound' in r) return undefined;
    return { username: r.username, password: r.secret };
  }

  /** Has the scheduler sync the directory into the store; the manifest blob and shared key. */
  async #requestManifest(
    channel: (what: string) => Promise<Channel>,
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
      channel,
      'local',
      req,
      `local "${spec.name}"`,
      this.#o.localTimeoutMs ?? 600_000,
    );
    if ('error' in r) throw sessionReplyError(r.error);
    return r;
  }

  async #syncLocal(
    channel: (what: string) => Promise<Channel>,
    spec: LocalSpec,
    cleanups: (() => Promise<void>)[],
  ): Promise<string> {
    const r = await this.#requestManifest(channel, spec);
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

  static async listen(
    nc: NatsConnection,
    workerId: string,
    ch: Channel,
    id: string,
  ): Promise<SshRelay> {
    // unix socket paths are short (108 bytes): keep them in the system temp dir
    const dir = await mkdtemp(join(tmpdir(), 'kiln-sshrelay-'));
    const path = join(dir, 'agent.sock');
    const conns = new Set<Socket>();
    const server = createServer((sock) => {
      conns.add(sock);
      sock.on('close', () => conns.delete(sock));
      void relayConnection(nc, workerId, ch, id, sock);
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
  workerId: string,
  ch: Channel,
  id: string,
  sock: Socket,
): Promise<void> {
  const stream = randomUUID();
  const up = sshUpSubject(ch.capability, stream);
  const down = nc.subscribe(sshDownSubject(workerId, ch.capability, stream));
  const send = (d: Uint8Array): void => nc.publish(up, ch.cipher.seal('ssh.up', d));
  let closed = false;
  const close = (): void => {
    if (closed) return;
    closed = true;
    down.unsubscribe();
    send(new Uint8Array(0));
    sock.destroy();
  };
  sock.on('close', close);
  sock.on('error', close);
  sock.pause();
  try {
    const msg = await nc.request(
      sessionSubject(ch.capability, 'ssh'),
      ch.cipher.seal('ssh', encodeSessionJson({ id, stream })),
      { timeout: 30_000 },
    );
    const r = decodeSessionJson<SshOpenReply>(ch.cipher.open('ssh.reply', msg.data));
    if ('error' in r) throw sessionReplyError(r.error);
  } catch {
    close();
    return;
  }
  sock.on('data', (d: Buffer) => send(d));
  sock.resume();
  for await (const m of down) {
    let data: Buffer;
    try {
      data = ch.cipher.open('ssh.down', m.data);
    } catch {
      break;
    }
    if (data.length === 0) break;
    sock.write(data);
  }
  sock.end();
  close();
}
