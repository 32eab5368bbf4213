import type { pb } from '@kiln/protocol';
import { Attrs, Caps } from './constants.js';
import { goJsonStringArray } from './go-json.js';
import { normalizeImageReference } from './reference.js';
import { State } from './state.js';
import {
  Output,
  addCaps,
  buildError,
  constraintsFrom,
  finishOp,
  marshalConstraints,
  newId,
} from './vertex.js';
import type {
  Constraints,
  ConstraintsOptions,
  MarshaledVertex,
  Vertex,
  MarshalContext,
} from './vertex.js';

/** SourceOp: content from outside the graph (an image, a local directory, git, http). */
export class SourceOp implements Vertex {
  readonly output: Output;

  constructor(
    readonly identifier: string,
    private readonly attrs: Readonly<Record<string, string>>,
    private readonly constraints: Constraints,
  ) {
    if (!identifier) throw buildError("source identifier can't be empty");
    this.output = new Output(this, 0);
  }

  inputs(): readonly Output[] {
    return [];
  }

  marshal(ctx: MarshalContext): MarshaledVertex {
    const attrs = { ...this.attrs };
    let c = this.constraints;
    if (this.identifier.startsWith('local://') && !(Attrs.localSessionID in attrs)) {
      // A local source without a session is made unique per marshal, as BuildKit does.
      attrs[Attrs.localUniqueID] = c.localUniqueId || ctx.constraints.localUniqueId || newId();
      c = addCaps(c, Caps.sourceLocalUnique);
    }
    const { op, metadata } = marshalConstraints(ctx.constraints, c);
    const source: pb.ISourceOp = { identifier: this.identifier };
    if (Object.keys(attrs).length > 0) source.attrs = attrs;
    const full: pb.IOp = { source };
    if (isPlatformSpecific(this.identifier)) full.platform = op.platform!;
    full.constraints = op.constraints!;
    return finishOp(full, metadata);
  }
}

function isPlatformSpecific(id: string): boolean {
  return id.startsWith('docker-image://') || id.startsWith('oci-layout://');
}

function sourceState(id: string, attrs: Record<string, string>, c: Constraints): State {
  const op = new SourceOp(id, attrs, c);
  const s = State.of(op.output);
  return c.platform ? s.platform(c.platform) : s;
}

export type ResolveMode = 'default' | 'pull' | 'local';

export interface ImageOptions extends ConstraintsOptions {
  resolveMode?: ResolveMode;
  recordType?: string;
  layerLimit?: number;
}

/** A container image from a registry: `docker-image://<normalized ref>`. */
export function image(ref: string, opts: ImageOptions = {}): State {
  const normalized = normalizeImageReference(ref);
  let c = addCaps(constraintsFrom(opts), Caps.sourceImage);
  const attrs: Record<string, string> = {};
  if (opts.resolveMode && opts.resolveMode !== 'default') {
    attrs[Attrs.imageResolveMode] = opts.resolveMode;
    if (opts.resolveMode === 'pull') c = addCaps(c, Caps.sourceImageResolveMode);
  }
  if (opts.recordType) attrs[Attrs.imageRecordType] = opts.recordType;
  if (opts.layerLimit !== undefined) {
    attrs[Attrs.imageLayerLimit] = String(opts.layerLimit);
    c = addCaps(c, Caps.sourceImageLayerLimit);
  }
  return sourceState(`docker-image://${normalized}`, attrs, c);
}

export interface LocalOptions extends ConstraintsOptions {
  sessionId?: string;
  includePatterns?: string[];
  excludePatterns?: string[];
  followPaths?: string[];
  sharedKeyHint?: string;
}

/** A directory the client provides through its session: `local://<name>`. */
export function local(name: string, opts: LocalOptions = {}): State {
  let c = constraintsFrom(opts);
  const attrs: Record<string, string> = {};
  if (opts.sessionId) {
    attrs[Attrs.localSessionID] = opts.sessionId;
    c = addCaps(c, Caps.sourceLocalSessionID);
  }
  if (opts.includePatterns?.length) {
    attrs[Attrs.includePatterns] = goJsonStringArray(opts.includePatterns);
    c = addCaps(c, Caps.sourceLocalIncludePatterns);
  }
  if (opts.followPaths?.length) {
    attrs[Attrs.followPaths] = goJsonStringArray(opts.followPaths);
    c = addCaps(c, Caps.sourceLocalFollowPaths);
  }
  if (opts.excludePatterns?.length) {
    attrs[Attrs.excludePatterns] = goJsonStringArray(opts.excludePatterns);
    c = addCaps(c, Caps.sourceLocalExcludePatterns);
  }
  if (opts.sharedKeyHint) {
    attrs[Attrs.sharedKeyHint] = opts.sharedKeyHint;
    c = addCaps(c, Caps.sourceLocalSharedKeyHint);
  }
  c = addCaps(c, Caps.sourceLocal);
  return sourceState(`local://${name}`, attrs, c);
}

export interface GitOptions extends ConstraintsOptions {
  keepGitDir?: boolean;
  /** Secret names holding an auth token / header for HTTP remotes (defaults as BuildKit). */
  authTokenSecret?: string;
  authHeaderSecret?: string;
  knownSSHHosts?: string;
  mountSSHSock?: string;
}

/** Splits the scheme off a git remote the way BuildKit's gitutil.ParseProtocol does. */
function parseGitProtocol(remote: string): {
  rest: string;
  kind: 'http' | 'ssh' | 'git' | 'unknown';
} {
  for (const [prefix, kind] of [
    ['https://', 'http'],
    ['http://', 'http'],
    ['git://', 'git'],
    ['ssh://', 'ssh'],
  ] as const) {
    if (remote.startsWith(prefix)) return { rest: remote.slice(prefix.length), kind };
  }
  if (/^[A-Za-z0-9._-]+@[^:/]+:/.test(remote)) return { rest: remote, kind: 'ssh' };
  return { rest: remote, kind: 'unknown' };
}

/** A git repository at a ref: `git://<remote>#<ref>`. */
export function git(remote: string, ref = '', opts: GitOptions = {}): State {
  let url = remote.split('#')[0]!;
  const parsed = parseGitProtocol(remote);
  let id = parsed.rest;
  if (parsed.kind === 'ssh' && !remote.startsWith('ssh://')) {
    const i = id.indexOf(':');
    if (i >= 0) id = `${id.slice(0, i)}/${id.slice(i + 1)}`;
  }
  if (parsed.kind === 'unknown') url = `https://${url}`;
  if (ref) id += `#${ref}`;
  let c = constraintsFrom(opts);
  const attrs: Record<string, string> = {};
  if (opts.keepGitDir) {
    attrs[Attrs.keepGitDir] = 'true';
    c = addCaps(c, Caps.sourceGitKeepDir);
  }
  if (url) {
    attrs[Attrs.fullRemoteURL] = url;
    c = addCaps(c, Caps.sourceGitFullURL);
  }
  const token = opts.authTokenSecret ?? 'GIT_AUTH_TOKEN';
  const header = opts.authHeaderSecret ?? 'GIT_AUTH_HEADER';
  if (token) attrs[Attrs.authTokenSecret] = token;
  if (header) attrs[Attrs.authHeaderSecret] = header;
  if (opts.authTokenSecret !== undefined || opts.authHeaderSecret !== undefined)
    c = addCaps(c, Caps.sourceGitHTTPAuth);
  if (parsed.kind === 'ssh') {
    if (opts.knownSSHHosts) attrs[Attrs.knownSSHHosts] = opts.knownSSHHosts;
    c = addCaps(c, Caps.sourceGitKnownSSHHosts);
    attrs[Attrs.mountSSHSock] = opts.mountSSHSock || 'default';
    c = addCaps(c, Caps.sourceGitMountSSHSock);
  }
  c = addCaps(c, Caps.sourceGit);
  return sourceState(`git://${id}`, attrs, c);
}

export interface HttpOptions extends ConstraintsOptions {
  /** Expected `sha256:...` digest of the content. */
  checksum?: string;
  filename?: string;
  /** File mode of the downloaded file. */
  perm?: number;
  uid?: number;
  gid?: number;
}

/** A file downloaded over http(s); the URL is the identifier. */
export function http(url: string, opts: HttpOptions = {}): State {
  let c = constraintsFrom(opts);
  const attrs: Record<string, string> = {};
  if (opts.checksum) {
    attrs[Attrs.httpChecksum] = opts.checksum;
    c = addCaps(c, Caps.sourceHTTPChecksum);
  }
  if (opts.filename) attrs[Attrs.httpFilename] = opts.filename;
  if (opts.perm) {
    attrs[Attrs.httpPerm] = `0${opts.perm.toString(8)}`;
    c = addCaps(c, Caps.sourceHTTPPerm);
  }
  if (opts.uid) {
    attrs[Attrs.httpUID] = String(opts.uid);
    c = addCaps(c, Caps.sourceHTTPUIDGID);
  }
  if (opts.gid) {
    attrs[Attrs.httpGID] = String(opts.gid);
    c = addCaps(c, Caps.sourceHTTPUIDGID);
  }
  c = addCaps(c, Caps.sourceHTTP);
  return sourceState(url, attrs, c);
}
