/**
 * KilnClient: the client side of `kiln.control.v1.Control` over gRPC. Every error is the typed
 * error the scheduler threw (`fromGrpcError`). `status()` survives a dropped connection: it
 * reconnects and resumes after the last frame it delivered, so its consumer sees every frame
 * exactly once, in order.
 *
 * Security: `tls` verifies the scheduler (and presents a client certificate for mutual TLS);
 * `token` is sent as `authorization: Bearer <token>` on every call, session included.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { GrpcChannel, Metadata, isCertificateError } from './grpc-h2.js';
import type { CallOptions, ChannelOptions, ChannelTls } from './grpc-h2.js';
import { KilnError, control, controlService, fromGrpcError } from '@kiln/protocol';
import type { pb } from '@kiln/protocol';
import type { Definition } from '@kiln/llb';
import { CLIENT_KEY_HEADER, INCARNATION_HEADER, RESEND_HEADER, isRetryable } from './retry.js';

/** What a call needs of a method of `controlService`. */
interface Method<Req, Res> {
  path: string;
  requestSerialize: (m: Req) => Buffer;
  responseDeserialize: (b: Buffer) => Res;
}

/** A Solve sent again by the client that sent it (see RESEND_HEADER). */
const RESEND = { [RESEND_HEADER]: '1' };
import { Attr, SpanName, tracer } from '@kiln/common';
import { SpanStatusCode, context, propagation, trace } from '@opentelemetry/api';
import { BuildSession } from './session.js';
import type { SessionOptions } from './session.js';
import { runBuild } from './build.js';
import type { BuildOptions, BuildResult } from './build.js';
import type { ProgressEvent } from './progress-event.js';
import { StatusEvents } from './status-events.js';

export type StatusResponse = InstanceType<typeof control.StatusResponse>;
export type WorkerRecord = InstanceType<typeof control.WorkerRecord>;
/** One record of a worker's build cache (BuildKit's `UsageRecord`). */
export type UsageRecord = InstanceType<typeof control.UsageRecord>;

/** BuildKit's prune options (`buildctl prune`). */
export interface PruneOptions {
  filter?: string[];
  all?: boolean;
  /** Keep what was used within this many seconds. */
  keepDurationSeconds?: number;
  /** Stop once each worker's cache is at most this many bytes. */
  keepBytes?: number;
}

export interface ConnectOptions {
  /**
   * TLS (PEM bytes): `ca` verifies the scheduler's certificate (default: the system's roots);
   * `cert` and `key` are the client's, for a farm with mutual TLS.
   */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
  /** A bearer token the farm maps to a tenant, sent with every call. */
  token?: string;
  /** How long connect() waits for the scheduler. Default 10 s. */
  connectTimeoutMs?: number;
  /**
   * How long status() keeps trying to reconnect, and a solve or session cut by a scheduler that
   * went away keeps being sent again, before it fails. Default 60 s.
   */
  reconnectWindowMs?: number;
  /**
   * Whether a solve or session cut by a scheduler that went away is sent again (to the next
   * address, or the same once restarted). Default true. The local farm turns it off: its builds'
   * state dies with it, and nothing restarts it behind the client's back.
   */
  resubmit?: boolean;
  /**
   * The deadline of each short call (listWorkers, diskUsage, cancel), after which it fails
   * `DEADLINE_EXCEEDED`. Default 60 s. Solve, status and sessions live as long as their build and
   * have none: a scheduler that vanished is found by keepalive pings instead.
   */
  callTimeoutMs?: number;
  /** The deadline of prune, which waits for every worker's answer. Default 10 min. */
  pruneTimeoutMs?: number;
  /**
   * Channel options: `grpc.keepalive_time_ms` (default 30 s) and `grpc.keepalive_timeout_ms`
   * (default 10 s) are read; others are ignored (the transport is not grpc-js: grpc-h2.ts).
   */
  channelOptions?: ChannelOptions;
}

export type SolveRequest = {
  /** The build id (`ref`); choose it to read the status while the build runs. */
  buildId: string;
  sessionId?: string;
  exporters?: { type: string; attrs?: Record<string, string> }[];
  /** `--cache-from` entries (BuildKit's CacheOptionsEntry: `type=local,src=...`). */
  cacheImports?: { type: string; attrs?: Record<string, string> }[];
  /** `--cache-to` entries (`type=local,dest=...,mode=max`). */
  cacheExports?: { type: string; attrs?: Record<string, string> }[];
  /**
   * Entitlements the build asks for (`security.insecure`, `network.host`), as `buildctl --allow`:
   * an op needing one runs only if asked for here and allowed by the farm.
   */
  entitlements?: string[];
} & (
  | { definition: Definition | pb.IDefinition; frontend?: undefined }
  | {
      definition?: undefined;
      /** e.g. `dockerfile.v0` */
      frontend: string;
      /** BuildKit's frontend attributes: `build-arg:K`, `target`, `platform`, `filename`... */
      attrs?: Record<string, string>;
      /** e.g. `{ dockerfile: dockerfileInput(text) }`. */
      inputs?: Record<string, Definition | pb.IDefinition>;
    }
);

export interface SolveResult {
  /** What the build reported (`result.id`, `result.layers`, `containerimage.config`...). */
  exporterResponse: Record<string, string>;
}

const toPb = (d: Definition | pb.IDefinition): pb.IDefinition =>
  'toProto' in d && typeof d.toProto === 'function' ? d.toProto() : (d as pb.IDefinition);

/** Splits `--addr A,B`: the schedulers of one farm, tried in turn. */
export function parseAddrs(addr: string): string[] {
  const out = addr
    .split(',')
    .map((a) => a.trim())
    .filter(Boolean);
  if (out.length === 0)
    throw new KilnError('SCHEDULER_ADDR_INVALID', `no scheduler address in '${addr}'`);
  return out;
}

/**
 * The CAs a TLS connection trusts without an explicit `ca`: Node's, which are its bundled roots and
 * the certificates of the file NODE_EXTRA_CA_CERTS names. `kiln` keeps that variable from Node's
 * start (reading it costs every command ~100 ms: cli/bin/kiln.js) and puts it back in the
 * environment, so Node's own store may lack the file: it is read here, when a connection needs it.
 * `null` (Node's store as is) when the variable is unset or names no readable file, as Node
 * ignores such a file with a warning.
 */
export function trustedCas(env: NodeJS.ProcessEnv = process.env): Buffer | null {
  const file = env.NODE_EXTRA_CA_CERTS;
  if (!file) return null;
  let extra: string;
  try {
    extra = readFileSync(file, 'utf8');
  } catch (e) {
    process.emitWarning(
      `Ignoring extra certs from \`${file}\`, load failed: ${(e as Error).message}`,
    );
    return null;
  }
  return Buffer.from(`${rootCertificates.join('\n')}\n${extra}`);
}

export class KilnClient {
  /** The channel to the scheduler in use; replaced by the next address on a failover. */
  #client: GrpcChannel;
  readonly #addrs: string[];
  #addrIndex: number;
  readonly #creds: ChannelTls | undefined;
  readonly #channelOptions: ChannelOptions;
  #closed = false;
  readonly #reconnectWindowMs: number;
  readonly #resubmitWindowMs: number;
  readonly #token: string | undefined;
  readonly #callTimeoutMs: number;
  readonly #pruneTimeoutMs: number;
  /** Sent with Session and Solve: the client a session serves (CLIENT_KEY_HEADER). */
  readonly #clientKey = { [CLIENT_KEY_HEADER]: randomBytes(24).toString('base64url') };

  private constructor(
    client: GrpcChannel,
    addrs: string[],
    index: number,
    creds: ChannelTls | undefined,
    channelOptions: ChannelOptions,
    o: ConnectOptions,
  ) {
    this.#client = client;
    this.#addrs = addrs;
    this.#addrIndex = index;
    this.#creds = creds;
    this.#channelOptions = channelOptions;
    this.#reconnectWindowMs = o.reconnectWindowMs ?? 60_000;
    this.#resubmitWindowMs = o.resubmit === false ? 0 : this.#reconnectWindowMs;
    this.#token = o.token;
    this.#callTimeoutMs = o.callTimeoutMs ?? 60_000;
    this.#pruneTimeoutMs = o.pruneTimeoutMs ?? 600_000;
  }

  /** Fresh metadata for a call: the token, if any, and `headers`. */
  #metadata(headers: Readonly<Record<string, string>> = {}): Metadata {
    const md = new Metadata();
    if (this.#token) md.set('authorization', `Bearer ${this.#token}`);
    for (const [k, v] of Object.entries(headers)) md.set(k, v);
    return md;
  }

  /**
   * Connects to a scheduler at `host:port` and waits until it is reachable. `addr` may name
   * several schedulers of one farm (`A,B`): the first reachable is used, and a call that finds it
   * gone moves on to the next (see `solve`, `status`, `session`).
   */
  static async connect(addr: string, o: ConnectOptions = {}): Promise<KilnClient> {
    if (o.token !== undefined && !/^[A-Za-z0-9._~+/=-]+$/.test(o.token))
      throw new KilnError('TOKEN_INVALID', 'a token is made of A-Z a-z 0-9 . _ ~ + / = -');
    const creds: ChannelTls | undefined = o.tls
      ? { ca: o.tls.ca ?? trustedCas(), key: o.tls.key ?? null, cert: o.tls.cert ?? null }
      : undefined;
    const channelOptions: ChannelOptions = {
      // A build's calls have no deadline: pings find a scheduler (or a path) that vanished.
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      ...o.channelOptions,
    };
    const addrs = parseAddrs(addr);
    // Each address in turn, the connect timeout shared between them.
    const until = Date.now() + (o.connectTimeoutMs ?? 10_000);
    let cause: unknown;
    for (let round = 0; Date.now() < until || round === 0; round++) {
      for (const [i, a] of addrs.entries()) {
        const client = new GrpcChannel(a, creds, channelOptions);
        const slice = Math.max(1, Math.ceil((until - Date.now()) / (addrs.length - i)));
        try {
          await new Promise<void>((resolve, reject) =>
            client.waitForReady(
              Date.now() + (addrs.length > 1 ? Math.min(slice, 2_000) : slice),
              (err) => (err ? reject(err) : resolve()),
            ),
          );
          return new KilnClient(client, addrs, i, creds, channelOptions, o);
        } catch (e) {
          cause = e;
          client.close();
          if (isCertificateError(e))
            throw new KilnError(
              'SCHEDULER_TLS_UNTRUSTED',
              `the scheduler at ${a} has a certificate this client does not trust: ${(e as Error).message} (give its CA with --tlscacert)`,
              { cause: e, details: { addr: a } },
            );
        }
      }
    }
    throw new KilnError('SCHEDULER_UNAVAILABLE', `cannot reach the scheduler at ${addr}`, {
      cause,
      retryable: true,
      details: { addr },
    });
  }

  /**
   * After a call on `used` failed retryably: moves to the next address (once per failure of a
   * channel, however many calls saw it fail). With one address the channel stays (its next
   * call opens a new connection, to a restarted scheduler).
   */
  #failover(used: GrpcChannel): void {
    if (this.#closed || this.#addrs.length < 2 || used !== this.#client) return;
    this.#addrIndex = (this.#addrIndex + 1) % this.#addrs.length;
    this.#client = new GrpcChannel(
      this.#addrs[this.#addrIndex]!,
      this.#creds,
      this.#channelOptions,
    );
    used.close();
  }

  /** The scheduler address in use (one of `connect`'s). */
  get addr(): string {
    return this.#addrs[this.#addrIndex]!;
  }

  /**
   * Runs `attempt` on the current channel until it succeeds, fails for good, or has failed
   * retryably for longer than `reconnectWindowMs`; between tries, backoff 50 ms to 1 s and the
   * next scheduler.
   */
  async #retrying<T>(
    attempt: (client: GrpcChannel, resend: boolean) => Promise<T>,
    signal?: AbortSignal,
  ): Promise<T> {
    let failingSince: number | undefined;
    let backoff = 50;
    for (let n = 0; ; n++) {
      const client = this.#client;
      try {
        return await attempt(client, n > 0);
      } catch (e) {
        const typed = e instanceof KilnError ? e : fromGrpcError(e);
        if (this.#closed || signal?.aborted || !isRetryable(e)) throw typed;
        failingSince ??= Date.now();
        if (Date.now() - failingSince >= this.#resubmitWindowMs) throw typed;
        this.#failover(client);
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 1_000);
      }
    }
  }

  /**
   * Runs a build to completion. Aborting `signal` (or closing the client) cancels it. A solve cut
   * by a scheduler that died or stopped (UNAVAILABLE, `SCHEDULER_UNAVAILABLE`) is sent again, same
   * ref and session, to the next scheduler (for up to `reconnectWindowMs`): the farm's task records
   * give back what had finished (CACHED), so no finished vertex runs again.
   */
  solve(req: SolveRequest, o: { signal?: AbortSignal } = {}): Promise<SolveResult> {
    const msg: InstanceType<typeof control.SolveRequest> = control.SolveRequest.create({
      ref: req.buildId,
      sessionId: req.sessionId ?? '',
      entitlements: req.entitlements ?? [],
      exporters: (req.exporters ?? []).map((e) => ({ type: e.type, attrs: e.attrs ?? {} })),
      cacheImports: (req.cacheImports ?? []).map((e) => ({ type: e.type, attrs: e.attrs ?? {} })),
      cacheExports: (req.cacheExports ?? []).map((e) => ({ type: e.type, attrs: e.attrs ?? {} })),
    });
    if (req.definition) {
      msg.definition = toPb(req.definition);
    } else {
      msg.frontend = req.frontend;
      msg.frontendAttrs = { ...req.attrs };
      msg.frontendInputs = Object.fromEntries(
        Object.entries(req.inputs ?? {}).map(([k, v]) => [k, toPb(v)]),
      );
    }
    // The build's trace starts here when the caller records spans (an SDK is installed): its
    // context rides in the call's metadata (W3C traceparent) to the scheduler.
    const span = tracer().startSpan(SpanName.solve, {
      attributes: { [Attr.buildId]: req.buildId ?? '' },
    });
    const carrier: Record<string, string> = {};
    propagation.inject(trace.setSpan(context.active(), span), carrier);
    return this.#retrying(
      (client, resend) =>
        this.#rawUnary(
          client,
          controlService.solve,
          msg,
          {},
          o.signal,
          resend
            ? { ...carrier, ...this.#clientKey, ...RESEND }
            : { ...carrier, ...this.#clientKey },
        ),
      o.signal,
    ).then(
      (r) => {
        span.end();
        return { exporterResponse: { ...r.exporterResponse } };
      },
      (err: unknown) => {
        span.setStatus({ code: SpanStatusCode.ERROR, message: String(err) });
        span.end();
        throw err;
      },
    );
  }

  /**
   * Opens a build session (pass its `id` as the solve's `sessionId`); close it after the solve.
   * A session stream cut by a scheduler that went away is opened again (same id) on the scheduler
   * in use, for up to `reconnectWindowMs`.
   */
  session(o: SessionOptions = {}): BuildSession {
    let used: GrpcChannel | undefined;
    return new BuildSession(
      () => {
        used = this.#client;
        return this.#client.makeBidiStreamRequest(
          controlService.session.path,
          controlService.session.requestSerialize,
          controlService.session.responseDeserialize,
          this.#metadata(this.#clientKey),
        );
      },
      {
        reconnectWindowMs: this.#resubmitWindowMs,
        ...o,
        // The next scheduler at once, not after the backoff: a solve sent meanwhile goes there too.
        onBreak: (failed) => {
          if (used !== undefined) this.#failover(used);
          o.onBreak?.(failed);
        },
      },
    );
  }

  /**
   * The build's status frames after `sinceSeq`, until the build ends. A dropped connection is
   * reconnected (for up to `reconnectWindowMs`) and the stream resumed after the last frame
   * delivered. Breaking out of the loop closes the stream.
   */
  async *status(
    buildId: string,
    sinceSeq = 0,
    o: { signal?: AbortSignal } = {},
  ): AsyncGenerator<StatusResponse> {
    let last = sinceSeq;
    let failingSince: number | undefined;
    let backoff = 50;
    // The incarnation of the scheduler that numbered `last`: another one starts from 0.
    let incarnation: string | undefined;
    for (;;) {
      if (o.signal?.aborted) return;
      const client = this.#client;
      const md = this.#metadata();
      if (incarnation) md.set(INCARNATION_HEADER, incarnation);
      const call = client.makeServerStreamRequest(
        controlService.status.path,
        controlService.status.requestSerialize,
        controlService.status.responseDeserialize,
        { ref: buildId, sinceSeq: last },
        md,
      );
      call.on('metadata', (m: Metadata) => {
        const inc = m.get(INCARNATION_HEADER)[0];
        if (typeof inc !== 'string' || inc === incarnation) return;
        // A new scheduler (adopting the build after a failover) numbers its frames afresh.
        if (incarnation !== undefined) last = 0;
        incarnation = inc;
      });
      const onAbort = (): void => call.cancel();
      o.signal?.addEventListener('abort', onAbort, { once: true });
      try {
        for await (const f of call as AsyncIterable<StatusResponse>) {
          failingSince = undefined;
          backoff = 50;
          const seq = Number(f.seq);
          if (seq <= last) continue;
          last = seq;
          yield f;
        }
        return;
      } catch (e) {
        if (o.signal?.aborted) return;
        const typed = fromGrpcError(e);
        // A broken transport or a stopping scheduler is retried (on the next one); other typed
        // errors from the scheduler are final.
        if (this.#closed || !isRetryable(e)) throw typed;
        failingSince ??= Date.now();
        if (Date.now() - failingSince > this.#reconnectWindowMs) throw typed;
        this.#failover(client);
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 1_000);
      } finally {
        o.signal?.removeEventListener('abort', onAbort);
        call.cancel();
      }
    }
  }

  /**
   * A whole build in one call (BuildKit's Go client `Solve`): the build id is made here, the
   * session opened and closed, progress followed (`onProgress`), outputs written (a `local`
   * output as files in a directory). Resolves once every output is written. See `build.ts`.
   */
  build(o: BuildOptions): Promise<BuildResult> {
    return runBuild(this, o);
  }

  /**
   * The build's progress as typed events (`status()` frames through `StatusEvents`): each
   * vertex's transitions once, logs as text, item statuses. Ends with the build.
   */
  async *progress(
    buildId: string,
    o: { signal?: AbortSignal } = {},
  ): AsyncGenerator<ProgressEvent> {
    const pending: ProgressEvent[] = [];
    const events = new StatusEvents((e) => pending.push(e));
    for await (const f of this.status(buildId, 0, o)) {
      events.push(f);
      yield* pending.splice(0);
    }
  }

  /** The registered workers (optionally filtered: `id==X`, `labels.K==V`). */
  async listWorkers(filter: string[] = []): Promise<WorkerRecord[]> {
    const r = await this.#unary(controlService.listWorkers, { filter }, this.#deadline());
    return r.record as WorkerRecord[];
  }

  /** The farm's build cache records, every worker's (BuildKit's DiskUsage). */
  async diskUsage(filter: string[] = []): Promise<UsageRecord[]> {
    const r = await this.#unary(controlService.diskUsage, { filter }, this.#deadline());
    return r.record as UsageRecord[];
  }

  /**
   * Prunes the farm's build cache (BuildKit's Prune); `onRecord` sees each removed record as its
   * worker reports it. Resolves with all of them.
   */
  async prune(o: PruneOptions = {}, onRecord?: (r: UsageRecord) => void): Promise<UsageRecord[]> {
    const call = this.#client.makeServerStreamRequest(
      controlService.prune.path,
      controlService.prune.requestSerialize,
      controlService.prune.responseDeserialize,
      {
        filter: o.filter ?? [],
        all: o.all ?? false,
        keepDurationSeconds: Math.trunc(o.keepDurationSeconds ?? 0),
        keepBytes: Math.trunc(o.keepBytes ?? 0),
      },
      this.#metadata(),
      { deadline: Date.now() + this.#pruneTimeoutMs },
    );
    const out: UsageRecord[] = [];
    try {
      for await (const r of call as AsyncIterable<UsageRecord>) {
        out.push(r);
        onRecord?.(r);
      }
    } catch (e) {
      throw fromGrpcError(e);
    }
    return out;
  }

  /** Cancels a build; vertices other builds share keep running for them. */
  async cancel(buildId: string): Promise<void> {
    await this.#unary(controlService.cancel, { ref: buildId }, this.#deadline());
  }

  close(): void {
    this.#closed = true;
    this.#client.close();
  }

  #deadline(): CallOptions {
    return { deadline: Date.now() + this.#callTimeoutMs };
  }

  #unary<Req, Res>(
    m: Method<Req, Res>,
    req: Req,
    options: CallOptions,
    signal?: AbortSignal,
    extraMetadata: Readonly<Record<string, string>> = {},
  ): Promise<Res> {
    return this.#rawUnary(this.#client, m, req, options, signal, extraMetadata).catch(
      (e: unknown) => {
        throw e instanceof KilnError ? e : fromGrpcError(e);
      },
    );
  }

  /** A unary call on `client`; a failure is the transport's error (see `isRetryable`). */
  #rawUnary<Req, Res>(
    client: GrpcChannel,
    m: Method<Req, Res>,
    req: Req,
    options: CallOptions,
    signal?: AbortSignal,
    headers: Record<string, string> = {},
  ): Promise<Res> {
    const md = this.#metadata(headers);
    return new Promise<Res>((resolve, reject) => {
      if (signal?.aborted) return reject(new KilnError('CANCELED', 'aborted'));
      const call = client.makeUnaryRequest(
        m.path,
        m.requestSerialize,
        m.responseDeserialize,
        req,
        md,
        options,
        (err, res) => {
          signal?.removeEventListener('abort', onAbort);
          if (err) reject(err);
          else if (res === undefined) reject(new KilnError('INTERNAL', 'empty response'));
          else resolve(res);
        },
      );
      const onAbort = (): void => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}
