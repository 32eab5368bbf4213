/**
 * The session relay: how a worker reaches the client of a build (its local directories, secrets,
 * ssh agents and registry credentials) without a connection of its own to it. The scheduler that
 * holds the client's `Session` gRPC stream answers for as long as that stream is open; a request
 * nobody answers means the session is gone.
 *
 * A worker first opens a channel for the task it holds a claim on:
 * - `kiln.sessionkey.<sid>.<workerId>`: request {@link SessionKeyRequest} (the task's record key,
 *   the claimed attempt's token, the worker's fresh X25519 public key), reply
 *   {@link SessionKeyReply}. Under the farm's NATS permissions a worker publishes only with its own
 *   id, and the scheduler opens the channel only when the record says that worker holds that
 *   attempt of a task of a build this session serves (a session id alone, which records carry,
 *   opens nothing). The reply carries the scheduler's public key and, sealed, the channel's
 *   capability: 256 random bits that exist only in the scheduler's memory and the claimant's.
 *
 * Then, every payload sealed with the channel's keys (`session-crypto.ts`, AES-256-GCM):
 * - `kiln.session.<cap>.local`: {@link LocalSyncRequest} -> {@link LocalSyncReply}. The
 *   scheduler asks the client for the directory's manifest (filtered by the patterns), puts
 *   every file the content store lacks into it (small files many to a blob: `pack`), then the
 *   manifest itself; the reply names the manifest blob. File content never travels over NATS.
 * - `kiln.session.<cap>.secret`: {@link SecretRequest} -> {@link SecretReply}. Core NATS only: a
 *   secret is never written to a stream, a bucket or the store, and never crosses the bus in clear.
 * - `kiln.session.<cap>.auth`: {@link AuthRequest} -> {@link AuthReply}: the client's registry
 *   credentials for one host (BuildKit's session/auth).
 * - `kiln.session.<cap>.ssh`: {@link SshOpenRequest} opens one agent connection; then sealed bytes
 *   flow on `kiln.session.<cap>.ssh.<stream>.up` (worker to client) and on the worker's own inbox,
 *   `_INBOX_worker.<id>.ssh.<cap>.<stream>` (client to worker); an empty plaintext closes the
 *   connection in that direction.
 * - `kiln.session.<cap>.close` (publish): the task is over; the scheduler forgets the channel.
 */
import { KilnError } from '@kiln/protocol';
import { workerInboxPrefix } from './nats-permissions.js';
import { InvalidNameError, assertWorkerId } from './subjects.js';

export const SESSION_SUBJECT_PREFIX = 'kiln.session';
export const SESSION_KEY_SUBJECT_PREFIX = 'kiln.sessionkey';

const SESSION_ID = /^[A-Za-z0-9_-]{1,128}$/;
const CAPABILITY = /^[A-Za-z0-9_-]{43}$/;

export function assertSessionId(id: string): string {
  if (!SESSION_ID.test(id)) throw new InvalidNameError('session id', id);
  return id;
}

export function assertSessionCapability(cap: string): string {
  if (!CAPABILITY.test(cap)) throw new InvalidNameError('session capability', '<hidden>');
  return cap;
}

/** Where a worker asks to open a channel to session `sessionId` (`*`: any worker). */
export function sessionKeySubject(sessionId: string, workerId: string): string {
  const w = workerId === '*' ? '*' : assertWorkerId(workerId);
  return `${SESSION_KEY_SUBJECT_PREFIX}.${assertSessionId(sessionId)}.${w}`;
}

export type SessionSubjectKind = 'local' | 'secret' | 'ssh' | 'auth' | 'close';

export function sessionSubject(capability: string, kind: SessionSubjectKind | '>'): string {
  return `${SESSION_SUBJECT_PREFIX}.${assertSessionCapability(capability)}.${kind}`;
}

/** The worker-to-client direction of one ssh agent connection. */
export function sshUpSubject(capability: string, stream: string): string {
  if (!SESSION_ID.test(stream)) throw new InvalidNameError('ssh stream', stream);
  return `${SESSION_SUBJECT_PREFIX}.${assertSessionCapability(capability)}.ssh.${stream}.up`;
}

/** The client-to-worker direction: the worker's own inbox (no other worker may subscribe to it). */
export function sshDownSubject(workerId: string, capability: string, stream: string): string {
  if (!SESSION_ID.test(stream)) throw new InvalidNameError('ssh stream', stream);
  return `${workerInboxPrefix(workerId)}.ssh.${assertSessionCapability(capability)}.${stream}`;
}

export interface SessionKeyRequest {
  /** The task record's key ({@link taskKey}) and the attempt token the worker claimed. */
  key: string;
  token: string;
  /** The worker's fresh X25519 public key (raw, base64url). */
  publicKey: string;
}

export type SessionKeyReply =
  | {
      publicKey: string;
      /** The channel's capability, sealed (kind `capability`) with the channel's keys, base64. */
      capability: string;
    }
  | { error: SessionReplyError };

export interface LocalSyncRequest {
  /** The local source name (`local://<dir>`). */
  dir: string;
  includePatterns: string[];
  excludePatterns: string[];
  followPaths: string[];
  /**
   * A manifest blob whose tree the asker already holds (its last copy of this context): files of
   * it that are stored in packs are reused from there rather than asked for again.
   */
  base?: string;
}

/** One entry of a local directory's manifest; paths are relative, `/`-separated, sorted. */
export interface ManifestEntry {
  path: string;
  /** unix st_mode: type and permission bits. */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /**
   * sha256 of a regular file's content: the blob in the store, or with `pack`, the bytes at
   * `offset` (`size` of them) of that blob, where small files are stored many to a blob.
   */
  digest?: string;
  pack?: string;
  offset?: number;
  /** A symlink's target. */
  linkname?: string;
  /** Modification time, ms since the epoch (kept so that an unchanged file makes the same layer). */
  mtimeMs: number;
}

export interface LocalManifest {
  entries: ManifestEntry[];
}

export interface SessionReplyError {
  code: string;
  message: string;
}

/**
 * `manifest`: the manifest blob's digest. `sharedKey`: the client's session shared key, when it
 * gave one: a worker keeps the directory it made from the manifest under it (with the op's
 * `local.sharedkeyhint` and patterns) and applies only the difference the next time.
 */
export type LocalSyncReply =
  { manifest: string; sharedKey?: string } | { error: SessionReplyError };

export interface SecretRequest {
  id: string;
}

/** The client's credentials for a registry host (`docker.io` for Docker Hub). */
export interface AuthRequest {
  host: string;
}

export type AuthReply =
  { username: string; secret: string } | { notFound: true } | { error: SessionReplyError };

export type SecretReply =
  { data: string /* base64 */ } | { notFound: true } | { error: SessionReplyError };

export interface SshOpenRequest {
  id: string;
  /** Chosen by the worker: names the connection's two subjects. */
  stream: string;
}

export type SshOpenReply = { ok: true } | { error: SessionReplyError };

const enc = new TextEncoder();
const dec = new TextDecoder();

export function encodeSessionJson(v: unknown): Uint8Array {
  return enc.encode(JSON.stringify(v));
}

export function decodeSessionJson<T>(data: Uint8Array): T {
  try {
    return JSON.parse(dec.decode(data)) as T;
  } catch (cause) {
    throw new KilnError('SESSION_PROTOCOL', 'a session message is not valid JSON', { cause });
  }
}

/** The client's session is not (or no longer) reachable. */
export class SessionUnavailableError extends KilnError {
  constructor(sessionId: string, what: string, cause?: unknown) {
    super(
      'SESSION_UNAVAILABLE',
      `the client session ${sessionId} is not connected (needed for ${what})`,
      { cause, details: { sessionId, what } },
    );
  }
}

/** An error the session's side answered with, as a typed error. */
export function sessionReplyError(e: SessionReplyError): KilnError {
  return new KilnError(e.code || 'SESSION_ERROR', e.message);
}
