/**
 * Client sessions: the `Session` gRPC stream a client opens before its Solve, and the scheduler's
 * end of the session relay (`@kiln/bus` session.ts) through which workers reach that client.
 *
 * Contract:
 * - A session exists from the client's `hello` to the end of its stream; while it exists this
 *   scheduler answers `kiln.session.<id>.>` on NATS for it (and only then: a request for a gone
 *   session gets "no responders", which workers report as SESSION_UNAVAILABLE).
 * - Local directories: the client lists the directory (filtered by the op's patterns) as a
 *   content manifest, streamed in chunks; only files the content store lacks are fetched from the
 *   client (small ones many at a time, into packs: `context-sync.ts`), verified, then the manifest
 *   itself. Workers read them from the store. A file whose bytes do not match its manifest digest
 *   fails the sync, storing nothing the manifest names.
 * - Secrets are asked for per request and relayed in memory only (never logged, never stored).
 * - ssh agent connections are relayed byte for byte in both directions.
 * - Exports: the scheduler streams an exporter's artifact to the client as `ExportChunk`s.
 * - A session is bound to the tenant and the gRPC connection (peer) that opened it: only a Solve
 *   of that tenant on that connection may use it; anyone else is told it does not exist
 *   (`SESSION_NOT_FOUND`), at once.
 */
import * as grpc from '@grpc/grpc-js';
import type { PassThrough, Readable } from 'node:stream';
import {
  SESSION_SUBJECT_PREFIX,
  assertSessionId,
  decodeSessionJson,
  encodeSessionJson,
  sessionSubject,
  sshStreamSubject,
} from '@kiln/bus';
import type {
  LocalSyncReply,
  LocalSyncRequest,
  SecretReply,
  SecretRequest,
  SessionReplyError,
  SshOpenReply,
  SshOpenRequest,
} from '@kiln/bus';
import { KilnError, control } from '@kiln/protocol';
import type { BlobStore } from '@kiln/store';
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import type { ErrorDetails } from '@kiln/protocol';
import type { Logger } from 'pino';
import { PackIndex, syncContext } from './context-sync.js';
import type { ContextSource, SyncStats } from './context-sync.js';

type SessionMessage = InstanceType<typeof control.SessionMessage>;
type SessionMessageInit = NonNullable<Parameters<typeof control.SessionMessage.create>[0]>;
export type SessionCall = grpc.ServerDuplexStream<SessionMessage, SessionMessage>;
type ContextEntry = NonNullable<NonNullable<SessionMessage['manifest']>['entries']>[number];

/** Bytes per ExportChunk. */
const EXPORT_CHUNK = 256 * 1024;
/** Entries a streamed context manifest may hold: an input bound (200,000 files must work). */
export const MANIFEST_MAX_ENTRIES = 2_000_000;

export class SessionError extends KilnError {
  constructor(message: string, code = 'SESSION_ERROR', details: ErrorDetails = {}) {
    super(code, message, { details });
  }
}

interface Pending {
  resolve: (m: SessionMessage) => void;
  reject: (e: Error) => void;
  /** File transfers: chunks go here instead. */
  sink?: PassThrough;
  /** Manifests: entries of the chunks so far (the last chunk resolves with all of them). */
  entries?: ContextEntry[];
}

export interface SessionManagerOptions {
  nc: NatsConnection;
  /** Where synced context files go; without it, local directories cannot be served. */
  store?: BlobStore;
  log: Logger;
}

export class SessionManager {
  readonly #sessions = new Map<string, ClientSession>();
  /** Shared by the sessions: a context synced again reuses the packs of its last sync. */
  readonly #packs = new PackIndex();
  readonly #waiters = new Map<string, Set<() => void>>();

  constructor(private readonly o: SessionManagerOptions) {}

  get(id: string): ClientSession | undefined {
    return this.#sessions.get(id);
  }

  /**
   * The session `id` for a Solve of `owner` (its tenant and connection), waiting up to
   * `timeoutMs` for its hello (the stream may open late).
   */
  async waitFor(
    id: string,
    owner: SessionOwner,
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<ClientSession> {
    const owned = (s: ClientSession): ClientSession => {
      if (s.owner.tenant === owner.tenant && s.owner.peer === owner.peer) return s;
      throw new SessionError(
        `session ${id} was not opened by this client (a session serves only the connection that opened it)`,
        'SESSION_NOT_FOUND',
        { sessionId: id },
      );
    };
    const have = this.#sessions.get(id);
    if (have) return owned(have);
    await new Promise<void>((resolve, reject) => {
      let set = this.#waiters.get(id);
      if (!set) this.#waiters.set(id, (set = new Set()));
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        set.delete(done);
        if (this.#sessions.has(id)) resolve();
        else
          reject(
            new SessionError(`session ${id} was not opened by the client`, 'SESSION_UNAVAILABLE', {
              sessionId: id,
            }),
          );
      };
      const timer = setTimeout(done, timeoutMs);
      signal?.addEventListener('abort', done, { once: true });
      set.add(done);
    });
    return owned(this.#sessions.get(id)!);
  }

  /** Serves one `Session` call of `tenant` until it ends. */
  attach(call: SessionCall, tenant: string): void {
    const owner: SessionOwner = { tenant, peer: call.getPeer() };
    let session: ClientSession | undefined;
    const fail = (e: Error): void => {
      call.emit('error', Object.assign(e, { code: grpc.status.INVALID_ARGUMENT }));
    };
    call.on('data', (m: SessionMessage) => {
      if (session) {
        session.onMessage(m);
        return;
      }
      const hello = m.hello;
      if (!hello) return fail(new Error('a session starts with a hello'));
      let id: string;
      try {
        id = assertSessionId(hello.sessionId ?? '');
      } catch (e) {
        return fail(e as Error);
      }
      if (this.#sessions.has(id)) return fail(new Error(`session ${id} is already open`));
      session = new ClientSession(id, owner, hello, call, { ...this.o, packs: this.#packs });
      this.#sessions.set(id, session);
      this.o.log.info({ sessionId: id, tenant, localDirs: hello.localDirs }, 'session opened');
      for (const w of this.#waiters.get(id) ?? []) w();
    });
    const end = (): void => {
      if (!session) return;
      const s = session;
      session = undefined;
      if (this.#sessions.get(s.id) === s) this.#sessions.delete(s.id);
      s.close();
      this.o.log.info({ sessionId: s.id }, 'session closed');
    };
    call.on('end', () => {
      end();
      call.end();
    });
    call.on('error', end);
    call.on('cancelled', end);
    call.on('close', end);
  }

  close(): void {
    for (const s of this.#sessions.values()) s.close();
    this.#sessions.clear();
  }
}

/** Who opened a session: its caller's tenant and gRPC peer (the connection). */
export interface SessionOwner {
  tenant: string;
  peer: string;
}

export class ClientSession {
  readonly localDirs: ReadonlySet<string>;
  /** The client's shared key ('' when it asks for no reuse of synced directories). */
  readonly sharedKey: string;
  readonly #pending = new Map<number, Pending>();
  readonly #sub: Subscription;
  /** ssh: worker's stream name <-> the numbered stream the client sees. */
  readonly #sshByName = new Map<string, number>();
  readonly #sshByNum = new Map<number, string>();
  #nextId = 1;
  #closed = false;

  constructor(
    readonly id: string,
    readonly owner: SessionOwner,
    hello: NonNullable<SessionMessage['hello']>,
    private readonly call: SessionCall,
    private readonly o: SessionManagerOptions & { packs: PackIndex },
  ) {
    this.localDirs = new Set(hello.localDirs ?? []);
    this.sharedKey = hello.sharedKey ?? '';
    this.#sub = o.nc.subscribe(sessionSubject(id, '>'), {
      callback: (err, msg) => {
        if (!err) this.#onNats(msg);
      },
    });
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#sub.unsubscribe();
    const err = new SessionError(`session ${this.id} ended`, 'SESSION_UNAVAILABLE');
    for (const p of this.#pending.values()) {
      p.sink?.destroy(err);
      p.reject(err);
    }
    this.#pending.clear();
    for (const name of this.#sshByName.keys())
      this.o.nc.publish(sshStreamSubject(this.id, name, 'down'), new Uint8Array(0));
  }

  #send(m: SessionMessageInit): boolean {
    if (this.#closed) throw new SessionError(`session ${this.id} ended`, 'SESSION_UNAVAILABLE');
    return this.call.write(control.SessionMessage.create(m));
  }

  /** A request to the client; resolves with its answer (or rejects with its SessionError). */
  request(
    m: Omit<SessionMessageInit, 'id'>,
    sink?: PassThrough,
    collect = false,
  ): Promise<SessionMessage> {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, {
        resolve,
        reject,
        ...(sink ? { sink } : {}),
        ...(collect ? { entries: [] } : {}),
      });
      try {
        this.#send({ ...m, id });
      } catch (e) {
        this.#pending.delete(id);
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
  }

  onMessage(m: SessionMessage): void {
    if (m.ssh) {
      const name = this.#sshByNum.get(Number(m.ssh.stream));
      if (name === undefined) return;
      const data = m.ssh.close ? new Uint8Array(0) : (m.ssh.data ?? new Uint8Array(0));
      if (m.ssh.close || data.length > 0)
        this.o.nc.publish(sshStreamSubject(this.id, name, 'down'), data);
      if (m.ssh.close) this.#dropSsh(name);
      return;
    }
    const id = Number(m.id);
    const p = this.#pending.get(id);
    if (!p) return;
    if (m.error) {
      this.#pending.delete(id);
      const err = new SessionError(m.error.message ?? '', m.error.code || 'SESSION_ERROR');
      p.sink?.destroy(err);
      p.reject(err);
      return;
    }
    if (m.fileChunk && p.sink) {
      const sink = p.sink;
      if (m.fileChunk.data?.length && !sink.write(m.fileChunk.data)) {
        this.call.pause();
        sink.once('drain', () => this.call.resume());
      }
      if (m.fileChunk.eof) {
        this.#pending.delete(id);
        sink.end();
        p.resolve(m);
      }
      return;
    }
    if (m.manifest && p.entries) {
      // The manifest is streamed: gather the chunks; the last one carries no `more`.
      for (const e of m.manifest.entries ?? []) p.entries.push(e);
      if (p.entries.length > MANIFEST_MAX_ENTRIES) {
        this.#pending.delete(id);
        p.reject(
          new SessionError(
            `the context manifest has more than ${MANIFEST_MAX_ENTRIES} entries`,
            'LOCAL_TOO_LARGE',
          ),
        );
        return;
      }
      if (m.manifest.more) return;
      m.manifest.entries = p.entries;
    }
    this.#pending.delete(id);
    p.resolve(m);
  }

  /** Streams an artifact to the client as ExportChunks. */
  async sendExport(index: number, platform: string, src: Readable): Promise<void> {
    let buf = Buffer.alloc(0);
    const flush = async (eof: boolean): Promise<void> => {
      while (buf.length >= EXPORT_CHUNK || (eof && buf.length >= 0)) {
        const data = buf.subarray(0, EXPORT_CHUNK);
        buf = buf.subarray(data.length);
        const last = eof && buf.length === 0;
        if (!this.#send({ export: { index, platform, data, eof: last } }))
          await new Promise((r) => this.call.once('drain', r));
        if (last) return;
      }
    };
    for await (const c of src) {
      buf = Buffer.concat([buf, c as Buffer]);
      if (buf.length >= EXPORT_CHUNK) await flush(false);
    }
    await flush(true);
  }

  // ---- the relay ----

  #onNats(msg: Msg): void {
    const rest = msg.subject.slice(`${SESSION_SUBJECT_PREFIX}.${this.id}.`.length);
    const reply = (v: unknown): void => {
      if (msg.reply) msg.respond(encodeSessionJson(v));
    };
    const replyError = (e: unknown): void => {
      const err: SessionReplyError =
        e instanceof KilnError
          ? { code: e.code, message: e.message }
          : { code: 'SESSION_ERROR', message: String(e) };
      reply({ error: err });
    };
    if (rest === 'local') {
      this.#syncLocal(decodeSessionJson<LocalSyncRequest>(msg.data)).then(
        (manifest) =>
          reply({
            manifest,
            ...(this.sharedKey ? { sharedKey: this.sharedKey } : {}),
          } satisfies LocalSyncReply),
        replyError,
      );
    } else if (rest === 'secret') {
      this.#secret(decodeSessionJson<SecretRequest>(msg.data)).then(reply, replyError);
    } else if (rest === 'ssh') {
      try {
        this.#openSsh(decodeSessionJson<SshOpenRequest>(msg.data));
        reply({ ok: true } satisfies SshOpenReply);
      } catch (e) {
        replyError(e);
      }
    } else {
      const m = /^ssh\.([A-Za-z0-9_-]+)\.up$/.exec(rest);
      const num = m ? this.#sshByName.get(m[1]!) : undefined;
      if (!m || num === undefined) return;
      const close = msg.data.length === 0;
      try {
        this.#send({ ssh: { stream: num, data: msg.data, close } });
      } catch {
        // the session is gone: the worker's side closes on its own
      }
      if (close) this.#dropSsh(m[1]!);
    }
  }

  async #secret(r: SecretRequest): Promise<SecretReply> {
    const m = await this.request({ secretRequest: { id: r.id } });
    const s = m.secretResponse;
    if (!s || s.notFound) return { notFound: true };
    return { data: Buffer.from(s.data ?? new Uint8Array(0)).toString('base64') };
  }

  #openSsh(r: SshOpenRequest): void {
    const num = this.#nextId++;
    this.#sshByName.set(r.stream, num);
    this.#sshByNum.set(num, r.stream);
    // An empty frame opens the connection on the client side.
    this.#send({ ssh: { id: r.id || 'default', stream: num, data: new Uint8Array(0) } });
  }

  #dropSsh(name: string): void {
    const num = this.#sshByName.get(name);
    this.#sshByName.delete(name);
    if (num !== undefined) this.#sshByNum.delete(num);
  }

  async #syncLocal(r: LocalSyncRequest): Promise<string> {
    const store = this.o.store;
    if (!store)
      throw new SessionError('this scheduler has no content store to sync local directories');
    if (!this.localDirs.has(r.dir))
      throw new SessionError(
        `no local directory named "${r.dir}" in this build's session`,
        'LOCAL_NOT_FOUND',
        { local: r.dir },
      );
    const src: ContextSource = {
      manifest: async (req) => {
        const m = await this.request(
          {
            manifestRequest: {
              dir: req.dir,
              includePatterns: req.includePatterns,
              excludePatterns: req.excludePatterns,
              followPaths: req.followPaths,
            },
          },
          undefined,
          true,
        );
        return (m.manifest?.entries ?? []).map((e) => ({
          path: e.path ?? '',
          mode: e.mode ?? 0,
          uid: e.uid ?? 0,
          gid: e.gid ?? 0,
          size: Number(e.size),
          mtimeMs: Math.floor(Number(e.mtimeUnixNano ?? 0) / 1e6),
          ...(e.digest ? { digest: e.digest } : {}),
          ...(e.linkname ? { linkname: e.linkname } : {}),
        }));
      },
      files: async (dir, paths, sink) => {
        await this.request(
          { fileRequest: paths.length === 1 ? { dir, path: paths[0] } : { dir, paths } },
          sink,
        );
      },
    };
    const stats: SyncStats = { files: 0, fetched: 0, packs: 0 };
    const digest = await syncContext(store, src, r, this.sharedKey, this.o.packs, stats);
    this.o.log.debug({ sessionId: this.id, local: r.dir, ...stats }, 'local directory synced');
    return digest;
  }
}
