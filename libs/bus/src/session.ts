/**
 * The session relay: how a worker reaches the client of a build (its local directories, secrets
 * and ssh agents) without a connection of its own to it. The scheduler that holds the client's
 * `Session` gRPC stream answers these NATS core subjects for as long as that stream is open; a
 * request nobody answers means the session is gone.
 *
 * - `kiln.session.<sid>.local`: request {@link LocalSyncRequest}, reply {@link LocalSyncReply}.
 *   The scheduler asks the client for the directory's manifest (filtered by the patterns), puts
 *   every file the content store lacks into it (small files many to a blob: `pack`), then the
 *   manifest itself; the reply names the manifest blob. File content never travels over NATS.
 * - `kiln.session.<sid>.secret`: request {@link SecretRequest}, reply {@link SecretReply}. Core
 *   NATS only: a secret is never written to a stream, a bucket or the store.
 * - `kiln.session.<sid>.ssh`: request {@link SshOpenRequest} opens one agent connection; then raw
 *   bytes flow on `kiln.session.<sid>.ssh.<stream>.up` (worker to client) and `.down` (client to
 *   worker); an empty message closes the connection in that direction.
 */
import { KilnError } from '@kiln/protocol';
import { InvalidNameError } from './subjects.js';

export const SESSION_SUBJECT_PREFIX = 'kiln.session';

const SESSION_ID = /^[A-Za-z0-9_-]{1,128}$/;

export function assertSessionId(id: string): string {
  if (!SESSION_ID.test(id)) throw new InvalidNameError('session id', id);
  return id;
}

export type SessionSubjectKind = 'local' | 'secret' | 'ssh';

export function sessionSubject(sessionId: string, kind: SessionSubjectKind | '>'): string {
  return `${SESSION_SUBJECT_PREFIX}.${assertSessionId(sessionId)}.${kind}`;
}

/** The two directions of one ssh agent connection. */
export function sshStreamSubject(sessionId: string, stream: string, dir: 'up' | 'down'): string {
  if (!SESSION_ID.test(stream)) throw new InvalidNameError('ssh stream', stream);
  return `${SESSION_SUBJECT_PREFIX}.${assertSessionId(sessionId)}.ssh.${stream}.${dir}`;
}

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
