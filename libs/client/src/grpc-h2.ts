/**
 * The gRPC client transport of KilnClient: unary, server-streaming and bidi calls over
 * `node:http2`, shaped like the part of grpc-js's `Client` that KilnClient uses (so the scheduler,
 * a grpc-js server, and any gRPC server speak to it unchanged).
 *
 * Why not grpc-js on the client: every `kiln` command is a new process, and loading grpc-js
 * (channel, resolvers, load balancers, subchannel pool, channelz, its DNS and zlib use) and its
 * connection state machine were a sixth of a fully cached build's CPU, the client's being most of
 * that build's time. This transport is one HTTP/2 session per channel, opened on first use and
 * again after it broke.
 *
 * Contract (grpc-js's, for what KilnClient relies on):
 * - targets `host:port`, `[v6]:port`, `dns:host:port`, `unix:/path` and `unix:///path`; TLS with
 *   `ca` (else Node's roots), `cert` and `key` (mutual TLS), host name verified;
 * - a failed call is an Error with `code` (the gRPC status), `details` and `metadata` (its
 *   trailers, `-bin` values as Buffers): a connection that cannot be made or that broke mid-call
 *   is `UNAVAILABLE`; `cancel()` and a destroyed stream are `CANCELLED`; a call past its
 *   `deadline` is `DEADLINE_EXCEEDED` (the deadline is sent as `grpc-timeout` too);
 * - a received message is at most 4 MiB (grpc-js's default), else `RESOURCE_EXHAUSTED`;
 * - keepalive: while calls are open, a ping every `grpc.keepalive_time_ms`; one not answered
 *   within `grpc.keepalive_timeout_ms` closes the connection (its calls fail `UNAVAILABLE`);
 * - an idle channel does not keep the process alive; `close()` ends its connection.
 */
import { connect as h2connect, constants as h2 } from 'node:http2';
import type {
  ClientHttp2Session,
  ClientHttp2Stream,
  IncomingHttpHeaders,
  IncomingHttpStatusHeader,
  OutgoingHttpHeaders,
} from 'node:http2';
import { connect as netConnect } from 'node:net';
import { Duplex } from 'node:stream';
import { GrpcStatus } from '@kiln/protocol';

/** OpenSSL's and Node's codes for a peer certificate that does not verify. */
const CERTIFICATE_ERRORS = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
  'CERT_REVOKED',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'HOSTNAME_MISMATCH',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** Whether `e` is a TLS peer certificate that did not verify (permanent for this server). */
export function isCertificateError(e: unknown): boolean {
  const code = (e as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && CERTIFICATE_ERRORS.has(code);
}

/** The largest message received, as grpc-js's default `grpc.max_receive_message_length`. */
export const MAX_RECEIVE_MESSAGE = 4 * 1024 * 1024;

/** Channel options; only these are read (others are ignored). */
export interface ChannelOptions {
  'grpc.keepalive_time_ms'?: number;
  'grpc.keepalive_timeout_ms'?: number;
  [key: string]: unknown;
}

/** TLS material (PEM); `ca` null or absent: Node's roots. */
export interface ChannelTls {
  ca?: Buffer | null;
  cert?: Buffer | null;
  key?: Buffer | null;
}

export interface CallOptions {
  /** Milliseconds since the epoch. */
  deadline?: number;
}

/** Call metadata (headers, trailers): lower-case keys, `-bin` values are Buffers. */
export class Metadata {
  readonly #map = new Map<string, (string | Buffer)[]>();

  set(key: string, value: string | Buffer): void {
    this.#map.set(key.toLowerCase(), [value]);
  }

  add(key: string, value: string | Buffer): void {
    const k = key.toLowerCase();
    const list = this.#map.get(k);
    if (list) list.push(value);
    else this.#map.set(k, [value]);
  }

  get(key: string): (string | Buffer)[] {
    return this.#map.get(key.toLowerCase()) ?? [];
  }

  /** The headers of a request. */
  toHeaders(): OutgoingHttpHeaders {
    const out: OutgoingHttpHeaders = {};
    for (const [k, values] of this.#map) {
      const strs = values.map((v) => (typeof v === 'string' ? v : v.toString('base64')));
      out[k] = strs.length === 1 ? strs[0] : strs;
    }
    return out;
  }

  /** The metadata in received headers or trailers (HTTP/2 and gRPC's own keys left out). */
  static fromHeaders(h: IncomingHttpHeaders): Metadata {
    const md = new Metadata();
    for (const [k, v] of Object.entries(h)) {
      if (v === undefined || k.startsWith(':') || RESERVED.has(k)) continue;
      const values = Array.isArray(v) ? v : [v];
      for (const value of values) {
        if (k.endsWith('-bin'))
          for (const part of value.split(',')) md.add(k, Buffer.from(part.trim(), 'base64'));
        else md.add(k, value);
      }
    }
    return md;
  }
}

const RESERVED = new Set([
  'content-type',
  'grpc-status',
  'grpc-message',
  'grpc-encoding',
  'grpc-accept-encoding',
  'grpc-status-details-bin',
  'te',
  'user-agent',
  'date',
]);

export interface StatusObject {
  code: number;
  details: string;
  metadata: Metadata;
}

/** A failed call, as grpc-js's ServiceError. */
export interface ServiceError extends Error, StatusObject {}

const NAMES = Object.fromEntries(Object.entries(GrpcStatus).map(([k, v]) => [v, k])) as Record<
  number,
  string
>;

/**
 * A failed call's error. Without a stack: it comes off the wire, its frames would be the
 * transport's, and Node's stream destroy reads `err.stack`, which in the CLI's one-file bundle
 * makes V8 work out source positions, 5-15 ms per error (each `kiln build` cancels its session).
 */
function serviceError(s: StatusObject): ServiceError {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  let e: ServiceError;
  try {
    e = new Error(`${s.code} ${NAMES[s.code] ?? 'UNKNOWN'}: ${s.details}`) as ServiceError;
  } finally {
    Error.stackTraceLimit = limit;
  }
  e.code = s.code;
  e.details = s.details;
  e.metadata = s.metadata;
  return e;
}

/** gRPC's percent-encoding of `grpc-message`. */
function decodeMessage(m: string | string[] | undefined): string {
  const s = Array.isArray(m) ? m.join(',') : (m ?? '');
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** The status of a stream reset before its trailers (grpc-js's mapping). */
function rstStatus(code: number): number {
  switch (code) {
    case h2.NGHTTP2_REFUSED_STREAM:
      return GrpcStatus.UNAVAILABLE;
    case h2.NGHTTP2_CANCEL:
      return GrpcStatus.CANCELLED;
    case h2.NGHTTP2_ENHANCE_YOUR_CALM:
      return GrpcStatus.RESOURCE_EXHAUSTED;
    case h2.NGHTTP2_INADEQUATE_SECURITY:
      return GrpcStatus.PERMISSION_DENIED;
    default:
      return GrpcStatus.INTERNAL;
  }
}

/**
 * One call: a Duplex of messages (objectMode). Written messages are sent; received ones are read.
 * Emits `metadata` (the response headers), then ends, or fails with a {@link ServiceError}.
 */
/**
 * A request message already encoded (its protobuf bytes): a call writes it as it is, instead of
 * serializing (a context manifest is encoded by hand, ahead of its request: see the client's
 * `context-listing.ts`).
 */
export class EncodedMessage {
  constructor(readonly bytes: Uint8Array) {}
}

export class GrpcCall<Req, Res> extends Duplex {
  #stream: ClientHttp2Stream | undefined;
  #status: StatusObject | undefined;
  #pending = Buffer.alloc(0);
  #trailers: IncomingHttpHeaders | undefined;
  #timer: NodeJS.Timeout | undefined;
  readonly #serialize: (m: Req) => Buffer;
  readonly #deserialize: (b: Buffer) => Res;
  readonly #onSettled: () => void;

  constructor(
    serialize: (m: Req) => Buffer,
    deserialize: (b: Buffer) => Res,
    deadline: number | undefined,
    onSettled: () => void,
  ) {
    super({ objectMode: true });
    this.#serialize = serialize;
    this.#deserialize = deserialize;
    this.#onSettled = onSettled;
    if (deadline !== undefined) {
      const ms = deadline - Date.now();
      if (ms <= 0) queueMicrotask(() => this.#deadlineExceeded());
      else this.#timer = setTimeout(() => this.#deadlineExceeded(), ms);
    }
  }

  /** Attaches the HTTP/2 stream (or the failure to open one). */
  attach(stream: ClientHttp2Stream | StatusObject, session?: ClientHttp2Session): void {
    if (!(stream instanceof Duplex)) return this.#finish(stream);
    if (this.#status) {
      stream.close(h2.NGHTTP2_CANCEL);
      return;
    }
    this.#stream = stream;
    stream.on('response', (h: IncomingHttpHeaders & IncomingHttpStatusHeader) => {
      if (h['grpc-status'] !== undefined) {
        // Trailers-only: the call failed (or ended) before any message.
        this.#trailers = h;
        return;
      }
      const ct = h['content-type'] ?? '';
      if (h[':status'] !== 200 || !ct.startsWith('application/grpc')) {
        this.#finish({
          code: h[':status'] === 200 ? GrpcStatus.UNKNOWN : httpStatus(h[':status']),
          details: `unexpected HTTP status ${h[':status']} (${ct || 'no content type'})`,
          metadata: new Metadata(),
        });
        stream.close(h2.NGHTTP2_CANCEL);
        return;
      }
      this.emit('metadata', Metadata.fromHeaders(h));
    });
    stream.on('data', (chunk: Buffer) => this.#onData(chunk));
    stream.on('trailers', (h: IncomingHttpHeaders) => (this.#trailers = h));
    stream.on('error', () => undefined); // its outcome is decided at 'close'
    stream.on('close', () => {
      const t = this.#trailers;
      if (t && t['grpc-status'] !== undefined && this.#pending.length === 0) {
        const code = Number(t['grpc-status']);
        this.#finish({
          code: Number.isInteger(code) ? code : GrpcStatus.UNKNOWN,
          details: decodeMessage(t['grpc-message']),
          metadata: Metadata.fromHeaders(t),
        });
      } else if (session?.destroyed || session?.closed || stream.rstCode === undefined) {
        this.#finish({
          code: GrpcStatus.UNAVAILABLE,
          details: 'connection dropped',
          metadata: new Metadata(),
        });
      } else {
        const rst = stream.rstCode;
        this.#finish({
          code: rst === h2.NGHTTP2_NO_ERROR ? GrpcStatus.INTERNAL : rstStatus(rst),
          details:
            rst === h2.NGHTTP2_NO_ERROR
              ? 'the stream ended without a status'
              : `stream reset with code ${rst}`,
          metadata: new Metadata(),
        });
      }
    });
  }

  #onData(chunk: Buffer): void {
    if (this.#status) return;
    let buf = this.#pending.length ? Buffer.concat([this.#pending, chunk]) : chunk;
    while (buf.length >= 5) {
      const len = buf.readUInt32BE(1);
      if (buf[0] !== 0 || len > MAX_RECEIVE_MESSAGE) {
        this.#stream?.close(h2.NGHTTP2_CANCEL);
        return this.#finish({
          code: buf[0] !== 0 ? GrpcStatus.INTERNAL : GrpcStatus.RESOURCE_EXHAUSTED,
          details:
            buf[0] !== 0
              ? 'a compressed message (none was asked for)'
              : `a message of ${len} bytes (at most ${MAX_RECEIVE_MESSAGE})`,
          metadata: new Metadata(),
        });
      }
      if (buf.length < 5 + len) break;
      let msg: Res;
      try {
        msg = this.#deserialize(buf.subarray(5, 5 + len));
      } catch (e) {
        this.#stream?.close(h2.NGHTTP2_CANCEL);
        return this.#finish({
          code: GrpcStatus.INTERNAL,
          details: `undecodable response: ${(e as Error).message}`,
          metadata: new Metadata(),
        });
      }
      buf = buf.subarray(5 + len);
      if (!this.push(msg)) this.#stream?.pause();
    }
    this.#pending = buf.length ? Buffer.from(buf) : Buffer.alloc(0);
  }

  override _read(): void {
    this.#stream?.resume();
  }

  override _write(
    m: Req | EncodedMessage,
    _enc: BufferEncoding,
    cb: (e?: Error | null) => void,
  ): void {
    const s = this.#stream;
    if (!s || this.#status || s.destroyed) return cb();
    const body = m instanceof EncodedMessage ? m.bytes : this.#serialize(m);
    const frame = Buffer.allocUnsafe(5 + body.length);
    frame[0] = 0;
    frame.writeUInt32BE(body.length, 1);
    frame.set(body, 5);
    s.write(frame, () => cb());
  }

  override _final(cb: (e?: Error | null) => void): void {
    const s = this.#stream;
    if (s && !s.destroyed && !this.#status) s.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    // Destroyed by its reader (a loop that broke out): the call is cancelled.
    if (!this.#status) this.cancel();
    cb(err);
  }

  /** Cancels the call: the server sees it cancelled; the call fails `CANCELLED`. */
  cancel(): void {
    if (this.#status) return;
    this.#stream?.close(h2.NGHTTP2_CANCEL);
    this.#finish({
      code: GrpcStatus.CANCELLED,
      details: 'Cancelled on client',
      metadata: new Metadata(),
    });
  }

  #deadlineExceeded(): void {
    if (this.#status) return;
    this.#stream?.close(h2.NGHTTP2_CANCEL);
    this.#finish({
      code: GrpcStatus.DEADLINE_EXCEEDED,
      details: 'Deadline exceeded',
      metadata: new Metadata(),
    });
  }

  #finish(s: StatusObject): void {
    if (this.#status) return;
    this.#status = s;
    clearTimeout(this.#timer);
    this.#onSettled();
    this.emit('status', s);
    if (s.code === GrpcStatus.OK) this.push(null);
    else if (!this.destroyed) this.destroy(serviceError(s));
  }
}

function httpStatus(s: number | undefined): number {
  switch (s) {
    case 400:
      return GrpcStatus.INTERNAL;
    case 401:
      return GrpcStatus.UNAUTHENTICATED;
    case 403:
      return GrpcStatus.PERMISSION_DENIED;
    case 404:
      return GrpcStatus.UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return GrpcStatus.UNAVAILABLE;
    default:
      return GrpcStatus.UNKNOWN;
  }
}

/** A deadline as gRPC's `grpc-timeout` (at most 8 digits, so a coarser unit for long ones). */
export function grpcTimeout(deadline: number): string {
  let n = Math.max(1, Math.ceil(deadline - Date.now()));
  for (const [unit, next] of [
    ['m', 1000],
    ['S', 60],
    ['M', 60],
  ] as const) {
    if (n < 1e8) return `${n}${unit}`;
    n = Math.ceil(n / next);
  }
  return `${Math.min(n, 99_999_999)}H`;
}

interface Target {
  /** The URL http2.connect is given (its scheme and authority). */
  url: string;
  authority: string;
  socketPath?: string;
}

function parseTarget(target: string, tls: boolean): Target {
  const scheme = tls ? 'https' : 'http';
  if (target.startsWith('unix:')) {
    const path = target.startsWith('unix://') ? target.slice('unix://'.length) : target.slice(5);
    return { url: `${scheme}://localhost`, authority: 'localhost', socketPath: path };
  }
  const hostPort = target.startsWith('dns:') ? target.slice(4).replace(/^\/\/[^/]*\//, '') : target;
  return { url: `${scheme}://${hostPort}`, authority: hostPort };
}

/** One channel to one server: one HTTP/2 connection, opened on first use, again after it broke. */
export class GrpcChannel {
  readonly #target: Target;
  readonly #tls: ChannelTls | undefined;
  readonly #keepaliveMs: number;
  readonly #keepaliveTimeoutMs: number;
  #session: ClientHttp2Session | undefined;
  #calls = 0;
  #pinger: NodeJS.Timeout | undefined;
  #closed = false;
  /** Connections whose server has answered (its HTTP/2 settings arrived). */
  readonly #answered = new WeakSet<ClientHttp2Session>();

  constructor(target: string, tls: ChannelTls | undefined, options: ChannelOptions = {}) {
    this.#target = parseTarget(target, tls !== undefined);
    this.#tls = tls;
    this.#keepaliveMs = options['grpc.keepalive_time_ms'] ?? 0;
    this.#keepaliveTimeoutMs = options['grpc.keepalive_timeout_ms'] ?? 20_000;
  }

  #connect(): ClientHttp2Session {
    const live = this.#session;
    if (live && !live.closed && !live.destroyed) return live;
    const t = this.#target;
    const tls = this.#tls;
    const s = h2connect(t.url, {
      ...(t.socketPath !== undefined
        ? { createConnection: () => netConnect(t.socketPath!) }
        : tls
          ? {
              ...(tls.ca ? { ca: tls.ca } : {}),
              ...(tls.cert ? { cert: tls.cert } : {}),
              ...(tls.key ? { key: tls.key } : {}),
            }
          : {}),
    });
    // A failed or broken connection fails its calls (their streams close): nothing to throw here.
    s.on('error', () => undefined);
    const drop = (): void => {
      if (this.#session === s) this.#session = undefined;
    };
    s.on('close', drop);
    // The server stops taking calls on it: the next call opens another connection.
    s.on('goaway', drop);
    s.once('remoteSettings', () => this.#answered.add(s));
    if (this.#calls === 0) s.unref();
    this.#session = s;
    return s;
  }

  /**
   * Calls `cb` once the server answered on a connection (its HTTP/2 settings arrived), or with an
   * error at `deadline`. Connection failures meanwhile are retried (backoff 50 ms to 1 s).
   */
  waitForReady(deadline: number, cb: (err?: Error) => void): void {
    let backoff = 50;
    let last: Error | undefined;
    const attempt = (): void => {
      if (this.#closed) return cb(new Error('the channel is closed'));
      const s = this.#connect();
      if (this.#answered.has(s)) return cb();
      const timer = setTimeout(
        () => finish(new Error(`no connection before the deadline: ${last?.message ?? 'timeout'}`)),
        Math.max(0, deadline - Date.now()),
      );
      const onSettings = (): void => finish();
      const onError = (e: Error): void => {
        last = e;
        // The server's certificate is not trusted (or not for this name): trying again for the
        // rest of the deadline cannot change that.
        if (isCertificateError(e)) finish(e);
      };
      const onClose = (): void => {
        cleanup();
        const wait = Math.min(backoff, deadline - Date.now());
        backoff = Math.min(backoff * 2, 1_000);
        if (wait <= 0)
          return cb(new Error(`no connection before the deadline: ${last?.message ?? 'closed'}`));
        setTimeout(attempt, wait);
      };
      const cleanup = (): void => {
        clearTimeout(timer);
        s.off('remoteSettings', onSettings);
        s.off('error', onError);
        s.off('close', onClose);
      };
      const finish = (err?: Error): void => {
        cleanup();
        cb(err);
      };
      s.once('remoteSettings', onSettings);
      s.on('error', onError);
      s.once('close', onClose);
    };
    attempt();
  }

  #start<Req, Res>(
    path: string,
    serialize: (m: Req) => Buffer,
    deserialize: (b: Buffer) => Res,
    metadata: Metadata,
    options: CallOptions,
  ): GrpcCall<Req, Res> {
    this.#callStarted();
    const call = new GrpcCall(serialize, deserialize, options.deadline, () => this.#callEnded());
    if (this.#closed) {
      call.attach({
        code: GrpcStatus.UNAVAILABLE,
        details: 'the channel is closed',
        metadata: new Metadata(),
      });
      return call;
    }
    const headers: OutgoingHttpHeaders = {
      ...metadata.toHeaders(),
      [h2.HTTP2_HEADER_METHOD]: 'POST',
      [h2.HTTP2_HEADER_PATH]: path,
      [h2.HTTP2_HEADER_AUTHORITY]: this.#target.authority,
      'content-type': 'application/grpc',
      te: 'trailers',
      'user-agent': 'kiln-client',
    };
    if (options.deadline !== undefined) headers['grpc-timeout'] = grpcTimeout(options.deadline);
    let session: ClientHttp2Session;
    let stream: ClientHttp2Stream;
    try {
      session = this.#connect();
      stream = session.request(headers, { endStream: false });
    } catch (e) {
      call.attach({
        code: GrpcStatus.UNAVAILABLE,
        details: `cannot start the call: ${(e as Error).message}`,
        metadata: new Metadata(),
      });
      return call;
    }
    call.attach(stream, session);
    return call;
  }

  #callStarted(): void {
    if (this.#calls++ === 0) {
      this.#session?.ref();
      if (this.#keepaliveMs > 0) {
        this.#pinger = setInterval(() => this.#ping(), this.#keepaliveMs);
        this.#pinger.unref();
      }
    }
  }

  #callEnded(): void {
    if (--this.#calls === 0) {
      this.#session?.unref();
      clearInterval(this.#pinger);
    }
  }

  /** A keepalive ping; a connection that does not answer in time is closed (its calls fail). */
  #ping(): void {
    const s = this.#session;
    if (!s || s.destroyed || s.connecting) return;
    const timer = setTimeout(() => s.destroy(), this.#keepaliveTimeoutMs);
    timer.unref();
    try {
      s.ping((err) => {
        clearTimeout(timer);
        if (err) s.destroy();
      });
    } catch {
      clearTimeout(timer);
    }
  }

  makeUnaryRequest<Req, Res>(
    path: string,
    serialize: (m: Req) => Buffer,
    deserialize: (b: Buffer) => Res,
    req: Req,
    metadata: Metadata,
    options: CallOptions,
    cb: (err: ServiceError | null, res?: Res) => void,
  ): { cancel(): void } {
    const call = this.#start(path, serialize, deserialize, metadata, options);
    let res: Res | undefined;
    let done = false;
    call.on('data', (m: Res) => (res = m));
    call.on('error', (e: ServiceError) => {
      if (!done) cb(e);
      done = true;
    });
    call.on('end', () => {
      if (!done) cb(null, res);
      done = true;
    });
    call.end(req);
    return call;
  }

  makeServerStreamRequest<Req, Res>(
    path: string,
    serialize: (m: Req) => Buffer,
    deserialize: (b: Buffer) => Res,
    req: Req,
    metadata: Metadata,
    options: CallOptions = {},
  ): GrpcCall<Req, Res> {
    const call = this.#start(path, serialize, deserialize, metadata, options);
    call.end(req);
    return call;
  }

  makeBidiStreamRequest<Req, Res>(
    path: string,
    serialize: (m: Req) => Buffer,
    deserialize: (b: Buffer) => Res,
    metadata: Metadata,
    options: CallOptions = {},
  ): GrpcCall<Req, Res> {
    return this.#start(path, serialize, deserialize, metadata, options);
  }

  /** Ends the connection once the calls still open have ended; later calls fail `UNAVAILABLE`. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#pinger);
    const s = this.#session;
    this.#session = undefined;
    if (s && !s.destroyed) s.close();
  }
}
