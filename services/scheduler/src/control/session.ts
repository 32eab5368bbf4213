/**
 * Client sessions: the `Session` gRPC stream a client opens before its Solve, and the scheduler's
 * end of the session relay (`@kiln/bus` session.ts) through which workers reach that client.
 *
 * Contract:
 * - A session exists from the client's `hello` to the end of its stream; while it exists this
 *   scheduler answers `kiln.sessionkey.<id>.*` on NATS for it (and only then: a request for a gone
 *   session gets "no responders", which workers report as SESSION_UNAVAILABLE).
 * - A worker reaches the session only through a channel it opens for a task it holds the claim
 *   on: the task's record (read from the bus, written only by the scheduler) must name that
 *   worker as the holder of that attempt, and one of the record's builds must be a build this
 *   session serves (`serve`, for as long as its Solve runs). The channel's subjects are a fresh
 *   random capability handed (sealed) only to that worker; every payload on them is sealed with
 *   the channel's keys (X25519 + AES-256-GCM, `@kiln/bus` session-crypto.ts): secrets, ssh bytes
 *   and registry credentials never cross NATS in clear. A channel ends with its task (`close`)
 *   or with the session.
 * - Local directories: the client lists the directory (filtered by the op's patterns) as a
 *   content manifest, streamed in chunks; only files the content store lacks are fetched from the
 *   client (small ones many at a time, into packs: `context-sync.ts`), verified, then the manifest
 *   itself. Workers read them from the store. A file whose bytes do not match its manifest digest
 *   fails the sync, storing nothing the manifest names.
 * - Secrets are asked for per request and relayed in memory only (never logged, never stored).
 * - ssh agent connections are relayed byte for byte in both directions.
 * - Exports: the scheduler streams an exporter's artifact to the client as `ExportChunk`s.
 * - A session is bound to the tenant and the client that opened it: the client's key
 *   (`CLIENT_KEY_HEADER`, a secret each client draws), else the gRPC connection (peer). Only a
 *   Solve of that tenant with that key (or on that connection) may use it; anyone else is told it
 *   does not exist (`SESSION_NOT_FOUND`), at once. Its owner may open it again (same id) while
 *   this scheduler still holds the stream that broke: the same session goes on over the new
 *   stream (what was asked over the old fails; an export being sent fails, never continued).
 */
import { timingSafeEqual } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { realpathSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import type { Readable } from 'node:stream';
import {
  SESSION_SUBJECT_PREFIX,
  SessionCipher,
  assertSessionId,
  assertWorkerId,
  decodeSessionJson,
  encodeSessionJson,
  getRecord,
  newSessionCapability,
  sessionKeyPair,
  sessionKeySubject,
  sessionSubject,
  sshDownSubject,
} from '@kiln/bus';
import type {
  AuthReply,
  AuthRequest,
  LocalSyncReply,
  LocalSyncRequest,
  SecretReply,
  SecretRequest,
  SessionKeyReply,
  SessionKeyRequest,
  SessionReplyError,
  SshOpenReply,
  SshOpenRequest,
} from '@kiln/bus';
import type { KV } from '@nats-io/kv';
import { CLIENT_KEY_HEADER, KilnError, control } from '@kiln/protocol';
import { FsBlobStore } from '@kiln/store';
import type { BlobStore, Digest } from '@kiln/store';
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
/** A client's digest of a directory listing (`ContextManifest.digest`). */
const LISTING_DIGEST = /^sha256:[0-9a-f]{64}$/;

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
  /** The task records (`kiln_tasks`): who holds which task's claim. */
  tasks: KV;
  /** Where synced context files go; without it, local directories cannot be served. */
  store?: BlobStore;
  log: Logger;
  /** Each sync of a local directory: was its listing sent in full, or unchanged (not sent)? */
  onSynced?: (listing: 'full' | 'unchanged') => void;
  /**
   * Clients on this machine may read `store` (a local farm's, under its owner's state dir): one
   * whose hello names its directory as `localStore` gets artifacts by reference (sendStoredExport).
   */
  storeReadByClients?: boolean;
}

/** A directory's real path, or undefined when it cannot be resolved. */
function realDir(dir: string): string | undefined {
  try {
    return realpathSync(dir);
  } catch {
    return undefined;
  }
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
      if (sameOwner(s.owner, owner)) return s;
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
    let session: ClientSession | undefined;
    const fail = (e: Error): void => {
      call.emit('error', Object.assign(e, { code: grpc.status.INVALID_ARGUMENT }));
    };
    let owner: SessionOwner;
    try {
      owner = sessionOwner(call, tenant);
    } catch (e) {
      return fail(e as Error);
    }
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
      const open = this.#sessions.get(id);
      if (open) {
        // Its client reopened it (a new connection, the old one not yet seen broken here): the
        // session goes on over the new stream, so a Solve that already holds it (a resend that
        // came first) is served. Anyone else is refused.
        if (!owner.key || !sameOwner(open.owner, owner))
          return fail(new Error(`session ${id} is already open`));
        open.rebind(call);
        session = open;
        this.o.log.info({ sessionId: id }, 'session reopened: the old stream is dropped');
        return;
      }
      session = new ClientSession(id, owner, hello, call, { ...this.o, packs: this.#packs });
      this.#sessions.set(id, session);
      this.o.log.info({ sessionId: id, tenant, localDirs: hello.localDirs }, 'session opened');
      for (const w of this.#waiters.get(id) ?? []) w();
    });
    const end = (): void => {
      if (!session) return;
      const s = session;
      session = undefined;
      // Reopened over another stream since: that one ends it.
      if (!s.servedBy(call)) return;
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

/** Channels a session may have open at once (one per task that uses it). */
const MAX_CHANNELS = 4_096;
const RECORD_KEY = /^[-/_=.A-Za-z0-9]{1,1024}$/;
const TOKEN = /^[A-Za-z0-9-]{1,64}$/;

/** One worker's sealed channel to the session, for one claimed task. */
interface Channel {
  capability: string;
  workerId: string;
  /** The claim it was opened under: the task record's key and the attempt token. */
  key: string;
  token: string;
  cipher: SessionCipher;
  sub: Subscription;
  /** ssh: the worker's stream name -> the numbered stream the client sees. */
  ssh: Map<string, number>;
}

/** Who opened a session: its caller's tenant, client key (if sent) and gRPC peer (the connection). */
export interface SessionOwner {
  tenant: string;
  peer: string;
  key?: string;
}

const CLIENT_KEY = /^[A-Za-z0-9_-]{16,128}$/;

/** The owner a Session or Solve call speaks for; a malformed client key is refused. */
export function sessionOwner(
  call: Pick<grpc.ServerUnaryCall<unknown, unknown>, 'metadata' | 'getPeer'>,
  tenant: string,
): SessionOwner {
  const key = call.metadata.get(CLIENT_KEY_HEADER)[0];
  if (key === undefined) return { tenant, peer: call.getPeer() };
  if (typeof key !== 'string' || !CLIENT_KEY.test(key))
    throw new SessionError(
      `${CLIENT_KEY_HEADER} must be 16 to 128 characters of A-Z a-z 0-9 _ -`,
      'SESSION_INVALID',
    );
  return { tenant, peer: call.getPeer(), key };
}

/** Whether `b` is the client that opened a session of `a`: by key when it has one, else by connection. */
function sameOwner(a: SessionOwner, b: SessionOwner): boolean {
  if (a.tenant !== b.tenant) return false;
  if (a.key === undefined) return b.key === undefined && a.peer === b.peer;
  if (b.key === undefined || a.key.length !== b.key.length) return false;
  return timingSafeEqual(Buffer.from(a.key), Buffer.from(b.key));
}

export class ClientSession {
  readonly localDirs: ReadonlySet<string>;
  /** The client's shared key ('' when it asks for no reuse of synced directories). */
  readonly sharedKey: string;
  /** The client answers registry credential requests. */
  readonly registryAuth: boolean;
  /** The client reads this scheduler's store directory itself (see sendStoredExport). */
  readonly readsStore: boolean;
  readonly #pending = new Map<number, Pending>();
  readonly #sub: Subscription;
  /** Builds (Solve refs) this session serves: the tasks of these may open channels. */
  readonly #builds = new Map<string, number>();
  readonly #channels = new Map<string, Channel>();
  /** ssh: the numbered stream the client sees -> the channel and its stream name. */
  readonly #sshByNum = new Map<number, { ch: Channel; name: string }>();
  /** Syncs of local directories while this session serves builds, by request (localContent). */
  readonly #localSyncs = new Map<string, Promise<string>>();
  #nextId = 1;
  #closed = false;
  /** The client's stream: replaced when its client reopens the session (`rebind`). */
  #call: SessionCall;
  /** Waits for a stream to drain, woken when the session moves off it or closes. */
  readonly #wake = new Set<() => void>();

  constructor(
    readonly id: string,
    readonly owner: SessionOwner,
    hello: NonNullable<SessionMessage['hello']>,
    call: SessionCall,
    private readonly o: SessionManagerOptions & { packs: PackIndex },
  ) {
    this.#call = call;
    this.localDirs = new Set(hello.localDirs ?? []);
    this.sharedKey = hello.sharedKey ?? '';
    this.registryAuth = hello.registryAuth ?? false;
    const store = o.store;
    const root = o.storeReadByClients && store instanceof FsBlobStore ? realDir(store.root) : '';
    this.readsStore = !!root && !!hello.localStore && realDir(hello.localStore) === root;
    this.#sub = o.nc.subscribe(sessionKeySubject(id, '*'), {
      callback: (err, msg) => {
        if (!err) void this.#onKeyRequest(msg);
      },
    });
  }

  /**
   * The tasks of build `buildId` may reach this session (until the returned function is called;
   * a build served twice is served until both end).
   */
  serve(buildId: string): () => void {
    this.#builds.set(buildId, (this.#builds.get(buildId) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.#builds.get(buildId) ?? 1) - 1;
      if (n > 0) this.#builds.set(buildId, n);
      else this.#builds.delete(buildId);
      // The next build sees the directories as they are then.
      if (this.#builds.size === 0) this.#localSyncs.clear();
    };
  }

  /**
   * The manifest blob of a local directory as the client has it now, synced into the store (only
   * files the store lacks cross the wire): the content a `local://` source resolves to. One sync
   * per directory and patterns while the session serves builds: the solver keys the source by
   * this manifest, and a worker that then runs the source gets the same one, so the client walks
   * its directory once per build, as BuildKit syncs a local source once per solve. A failed sync
   * is not kept.
   */
  localContent(r: LocalSyncRequest): Promise<string> {
    const key = JSON.stringify([r.dir, r.includePatterns, r.excludePatterns, r.followPaths]);
    let p = this.#localSyncs.get(key);
    if (!p) {
      p = this.#syncLocal(r);
      this.#localSyncs.set(key, p);
      p.catch(() => {
        if (this.#localSyncs.get(key) === p) this.#localSyncs.delete(key);
      });
    }
    return p;
  }

  /** Resolves when `call` drains, or the session moves off it or closes (the caller checks). */
  #drained(call: SessionCall): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        call.off('drain', done);
        this.#wake.delete(done);
        resolve();
      };
      call.once('drain', done);
      this.#wake.add(done);
    });
  }

  /** Whether `call` is the stream this session speaks over now. */
  servedBy(call: SessionCall): boolean {
    return this.#call === call;
  }

  /**
   * Goes on over `call`, its client's new stream: what was asked over the old one fails (its
   * answers are lost with it); the builds it serves and the workers' channels stay.
   */
  rebind(call: SessionCall): void {
    const old = this.#call;
    this.#call = call;
    const err = new SessionError(`session ${this.id} was reopened`, 'SESSION_UNAVAILABLE');
    for (const p of this.#pending.values()) {
      p.sink?.destroy(err);
      p.reject(err);
    }
    this.#pending.clear();
    for (const w of [...this.#wake]) w();
    old.end();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of [...this.#wake]) w();
    this.#sub.unsubscribe();
    const err = new SessionError(`session ${this.id} ended`, 'SESSION_UNAVAILABLE');
    for (const p of this.#pending.values()) {
      p.sink?.destroy(err);
      p.reject(err);
    }
    this.#pending.clear();
    for (const ch of [...this.#channels.values()]) this.#closeChannel(ch);
  }

  #send(m: SessionMessageInit): boolean {
    if (this.#closed) throw new SessionError(`session ${this.id} ended`, 'SESSION_UNAVAILABLE');
    return this.#call.write(control.SessionMessage.create(m));
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
      const s = this.#sshByNum.get(Number(m.ssh.stream));
      if (s === undefined) return;
      const data = m.ssh.close ? new Uint8Array(0) : (m.ssh.data ?? new Uint8Array(0));
      if (m.ssh.close || data.length > 0) this.#sshDown(s.ch, s.name, data);
      if (m.ssh.close) this.#dropSsh(s.ch, s.name);
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
        const call = this.#call;
        call.pause();
        sink.once('drain', () => call.resume());
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

  /**
   * The files of a directory the client serves (`localDirs`), by path: asks for its manifest,
   * which is also what lets the client serve them. Paths are relative, `/`-separated.
   */
  async listDir(dir: string): Promise<Map<string, { size: number; digest?: string }>> {
    if (!this.localDirs.has(dir))
      throw new SessionError(
        `no local directory named "${dir}" in this build's session`,
        'LOCAL_NOT_FOUND',
        {
          local: dir,
        },
      );
    const m = await this.request({ manifestRequest: { dir } }, undefined, true);
    return new Map(
      (m.manifest?.entries ?? []).map((e) => [
        e.path ?? '',
        { size: Number(e.size ?? 0), ...(e.digest ? { digest: e.digest } : {}) },
      ]),
    );
  }

  /** One file of a served directory (listed by {@link listDir} first), streamed. */
  readFile(dir: string, path: string): Readable {
    const sink = new PassThrough();
    this.request({ fileRequest: { dir, path } }, sink).catch((e: unknown) =>
      sink.destroy(e instanceof Error ? e : new Error(String(e))),
    );
    return sink;
  }

  /**
   * Sends the blob `digest` of `store` as the artifact of export `index`: by reference (one
   * ExportChunk naming the blob) when the client reads this store itself, else its bytes.
   */
  async sendStoredExport(
    index: number,
    platform: string,
    store: BlobStore,
    digest: Digest,
  ): Promise<void> {
    const st = this.readsStore ? await store.stat(digest) : undefined;
    if (!st) return this.sendExport(index, platform, await store.get(digest));
    await this.#writeExport(this.#call, {
      index,
      platform,
      blob: digest,
      size: st.size,
      eof: true,
    });
  }

  /**
   * Writes one ExportChunk over `call`, the stream its artifact started on, waiting for it to
   * drain; fails when the session closed or moved to another stream meanwhile (one artifact, one
   * stream: the client drops what it had of it; a tail sent over the new stream would be taken
   * whole).
   */
  async #writeExport(
    call: SessionCall,
    chunk: NonNullable<SessionMessageInit['export']>,
  ): Promise<void> {
    if (this.#closed || this.#call !== call)
      throw new SessionError(
        `session ${this.id} broke while an export was sent`,
        'SESSION_UNAVAILABLE',
      );
    if (!call.write(control.SessionMessage.create({ export: chunk }))) await this.#drained(call);
  }

  /** Streams an artifact to the client as ExportChunks (`cache`: a cache export's). */
  async sendExport(index: number, platform: string, src: Readable, cache = false): Promise<void> {
    const call = this.#call;
    let buf = Buffer.alloc(0);
    const flush = async (eof: boolean): Promise<void> => {
      while (buf.length >= EXPORT_CHUNK || (eof && buf.length >= 0)) {
        const data = buf.subarray(0, EXPORT_CHUNK);
        buf = buf.subarray(data.length);
        const last = eof && buf.length === 0;
        await this.#writeExport(call, { index, platform, data, eof: last, cache });
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

  /** A worker asks for a channel: granted only to the holder of a task of a build served here. */
  async #onKeyRequest(msg: Msg): Promise<void> {
    const reply = (v: SessionKeyReply): void => {
      if (msg.reply) msg.respond(encodeSessionJson(v));
    };
    const deny = (message: string): void => {
      this.o.log.warn(
        { sessionId: this.id, subject: msg.subject, reason: message },
        'session channel refused',
      );
      reply({ error: { code: 'SESSION_DENIED', message } });
    };
    try {
      const workerId = assertWorkerId(msg.subject.slice(msg.subject.lastIndexOf('.') + 1));
      const req = decodeSessionJson<Partial<SessionKeyRequest>>(msg.data);
      if (
        typeof req.key !== 'string' ||
        !RECORD_KEY.test(req.key) ||
        typeof req.token !== 'string' ||
        !TOKEN.test(req.token) ||
        typeof req.publicKey !== 'string'
      )
        return deny('malformed channel request');
      if (!(await this.#holds(workerId, req.key, req.token)))
        return deny(`worker ${workerId} holds no claim on a task of this session's builds`);
      if (this.#closed) return deny('the session ended');
      if (this.#channels.size >= MAX_CHANNELS) return deny('too many open channels');
      const own = sessionKeyPair();
      const cipher = SessionCipher.derive(own, 'scheduler', {
        sessionId: this.id,
        workerId,
        key: req.key,
        token: req.token,
        workerPublicKey: req.publicKey,
        schedulerPublicKey: own.publicKey,
      });
      const capability = newSessionCapability();
      const ch: Channel = {
        capability,
        workerId,
        key: req.key,
        token: req.token,
        cipher,
        ssh: new Map(),
        sub: this.o.nc.subscribe(sessionSubject(capability, '>'), {
          callback: (err, m) => {
            if (!err) this.#onChannel(ch, m);
          },
        }),
      };
      this.#channels.set(capability, ch);
      reply({
        publicKey: own.publicKey,
        capability: Buffer.from(cipher.seal('capability', Buffer.from(capability))).toString(
          'base64',
        ),
      });
    } catch (e) {
      deny(e instanceof KilnError ? e.message : String(e));
    }
  }

  /**
   * Whether the record says `workerId` holds attempt `token` of the task `key`, running, for a
   * build this session serves (the record is the scheduler's: workers cannot write it).
   */
  async #holds(workerId: string, key: string, token: string): Promise<boolean> {
    const r = (await getRecord(this.o.tasks, key))?.record;
    return (
      !!r &&
      r.state === 'running' &&
      r.holder === workerId &&
      r.attemptToken === token &&
      r.builds.some((b) => this.#builds.has(b))
    );
  }

  #closeChannel(ch: Channel): void {
    if (this.#channels.get(ch.capability) !== ch) return;
    this.#channels.delete(ch.capability);
    ch.sub.unsubscribe();
    for (const name of [...ch.ssh.keys()]) {
      this.#sshDown(ch, name, new Uint8Array(0));
      this.#dropSsh(ch, name);
    }
  }

  #sshDown(ch: Channel, name: string, data: Uint8Array): void {
    this.o.nc.publish(
      sshDownSubject(ch.workerId, ch.capability, name),
      ch.cipher.seal('ssh.down', data),
    );
  }

  #onChannel(ch: Channel, msg: Msg): void {
    const rest = msg.subject.slice(`${SESSION_SUBJECT_PREFIX}.${ch.capability}.`.length);
    const kind = /^ssh\.[A-Za-z0-9_-]+\.up$/.test(rest) ? 'ssh.up' : rest;
    let data: Buffer;
    try {
      data = ch.cipher.open(kind, msg.data);
    } catch {
      this.o.log.warn({ sessionId: this.id, worker: ch.workerId, kind }, 'session message refused');
      return;
    }
    const reply = (v: unknown): void => {
      if (msg.reply) msg.respond(ch.cipher.seal(`${kind}.reply`, encodeSessionJson(v)));
    };
    const replyError = (e: unknown): void => {
      const err: SessionReplyError =
        e instanceof KilnError
          ? { code: e.code, message: e.message }
          : { code: 'SESSION_ERROR', message: String(e) };
      reply({ error: err });
    };
    if (kind === 'local' || kind === 'secret' || kind === 'auth' || kind === 'ssh') {
      this.#answer(ch, kind, data).then(reply, replyError);
    } else if (kind === 'close') {
      this.#closeChannel(ch);
    } else if (kind === 'ssh.up') {
      const name = rest.slice(4, -3);
      const num = ch.ssh.get(name);
      if (num === undefined) return;
      const close = data.length === 0;
      try {
        this.#send({ ssh: { stream: num, data, close } });
      } catch {
        // the session is gone: the worker's side closes on its own
      }
      if (close) this.#dropSsh(ch, name);
    }
  }

  /**
   * One request of a channel, answered only while its claim still holds: a worker whose attempt
   * was re-dispatched (or whose task's builds all ended) gets `SESSION_DENIED`, and the channel
   * closes.
   */
  async #answer(ch: Channel, kind: 'local' | 'secret' | 'auth' | 'ssh', data: Buffer) {
    if (!(await this.#holds(ch.workerId, ch.key, ch.token))) {
      this.#closeChannel(ch);
      throw new SessionError(
        `worker ${ch.workerId} no longer holds the claim this channel was opened for`,
        'SESSION_DENIED',
      );
    }
    switch (kind) {
      case 'local': {
        const manifest = await this.localContent(decodeSessionJson<LocalSyncRequest>(data));
        return {
          manifest,
          ...(this.sharedKey ? { sharedKey: this.sharedKey } : {}),
        } satisfies LocalSyncReply;
      }
      case 'secret':
        return this.#secret(decodeSessionJson<SecretRequest>(data));
      case 'auth':
        return this.credentials(decodeSessionJson<AuthRequest>(data).host);
      case 'ssh':
        this.#openSsh(ch, decodeSessionJson<SshOpenRequest>(data));
        return { ok: true } satisfies SshOpenReply;
    }
  }

  async #secret(r: SecretRequest): Promise<SecretReply> {
    const m = await this.request({ secretRequest: { id: r.id } });
    const s = m.secretResponse;
    if (!s || s.notFound) return { notFound: true };
    return { data: Buffer.from(s.data ?? new Uint8Array(0)).toString('base64') };
  }

  /**
   * The client's registry credentials for `host` (BuildKit's session/auth), asked for each time
   * (never stored, never logged); `notFound` when the client offers none.
   */
  async credentials(host: string): Promise<AuthReply> {
    if (!this.registryAuth || typeof host !== 'string' || host === '') return { notFound: true };
    const m = await this.request({ authRequest: { host } });
    const a = m.authResponse;
    if (!a || a.notFound || !a.secret) return { notFound: true };
    return { username: a.username ?? '', secret: a.secret };
  }

  #openSsh(ch: Channel, r: SshOpenRequest): void {
    if (typeof r.stream !== 'string' || !/^[A-Za-z0-9_-]{1,128}$/.test(r.stream))
      throw new SessionError('bad ssh stream name', 'SESSION_PROTOCOL');
    const num = this.#nextId++;
    ch.ssh.set(r.stream, num);
    this.#sshByNum.set(num, { ch, name: r.stream });
    // An empty frame opens the connection on the client side.
    this.#send({ ssh: { id: r.id || 'default', stream: num, data: new Uint8Array(0) } });
  }

  #dropSsh(ch: Channel, name: string): void {
    const num = ch.ssh.get(name);
    ch.ssh.delete(name);
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
      manifest: async (req, ifChangedFrom) => {
        const m = await this.request(
          {
            manifestRequest: {
              dir: req.dir,
              includePatterns: req.includePatterns,
              excludePatterns: req.excludePatterns,
              followPaths: req.followPaths,
              ...(ifChangedFrom ? { ifChangedFrom } : {}),
            },
          },
          undefined,
          true,
        );
        if (m.manifest?.unchanged) {
          if (!ifChangedFrom || m.manifest.digest !== ifChangedFrom)
            throw new SessionError('the client answered unchanged unasked', 'SESSION_ERROR');
          return 'unchanged';
        }
        // Kept only in the form the client makes (a bounded input).
        const digest = LISTING_DIGEST.test(m.manifest?.digest ?? '') ? m.manifest!.digest! : '';
        const entries = (m.manifest?.entries ?? []).map((e) => ({
          path: e.path ?? '',
          mode: e.mode ?? 0,
          uid: e.uid ?? 0,
          gid: e.gid ?? 0,
          size: Number(e.size),
          mtimeMs: Math.floor(Number(e.mtimeUnixNano ?? 0) / 1e6),
          ...(e.digest ? { digest: e.digest } : {}),
          ...(e.linkname ? { linkname: e.linkname } : {}),
        }));
        return { entries, digest };
      },
      files: async (dir, paths, sink) => {
        await this.request(
          { fileRequest: paths.length === 1 ? { dir, path: paths[0] } : { dir, paths } },
          sink,
        );
      },
    };
    const stats: SyncStats = { files: 0, fetched: 0, packs: 0, unchanged: false };
    const digest = await syncContext(
      store,
      src,
      r,
      this.sharedKey,
      this.o.packs,
      stats,
      this.owner.tenant,
    );
    this.o.log.debug({ sessionId: this.id, local: r.dir, ...stats }, 'local directory synced');
    this.o.onSynced?.(stats.unchanged ? 'unchanged' : 'full');
    return digest;
  }
}
