/**
 * The scheduler's gRPC service `kiln.control.v1.Control`: Solve, Status, ListWorkers, Cancel,
 * Session, and DiskUsage and Prune of the workers' caches (prune.ts).
 *
 * Contract:
 * - Many builds run at once; each is identified by the client's `ref` (a fresh id when empty).
 * - Solve runs a Definition, or a frontend (`dockerfile.v0`) in process whose per-platform
 *   Definitions are then solved concurrently. Base image configs come from the injected
 *   `metaResolver` (the service entry wires a registry-backed one later; without one, base
 *   images contribute no config: no Env, WorkingDir or User from the image).
 * - A Solve call the client cancels (or disconnects from) cancels its build, except the tasks
 *   another build shares (the Dispatcher keeps those running).
 * - Status streams a build's frames from `since_seq` (exactly once, in order) and ends after the
 *   build's last frame; it may be opened before the Solve.
 * - A solve with a `session_id` waits (briefly) for that session's stream: its workers reach the
 *   client's local directories, secrets and ssh agents through it (session.ts), and its
 *   exporters' artifacts are streamed back over it (exports.ts).
 * - Every error reaches the client typed (`toGrpcStatus`; the client uses `fromGrpcError`).
 * - Every call is authenticated first (`auth`, auth.ts): a build belongs to its caller's tenant;
 *   Status and Cancel of another tenant's build answer BUILD_NOT_FOUND; a session serves only
 *   the tenant and connection that opened it; cache keys and cache mounts are per tenant unless
 *   `sharedCache`; ops needing an entitlement run only if asked for and allowed
 *   (entitlements.ts).
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { Attr, SpanName, tracer } from '@kiln/common';
import { SpanStatusCode, context, propagation, trace } from '@opentelemetry/api';
import type { TextMapGetter } from '@opentelemetry/api';
import { INPUT_LOST_CODE, listWorkers } from '@kiln/bus';
import type { WorkerInfo } from '@kiln/bus';
import { frontendLimits, getFrontend } from '@kiln/dockerfile';
import type { FrontendLimits, MetaResolver } from '@kiln/dockerfile';
import { dependents, parseDefinition } from '@kiln/llb';
import { ListenFailedError } from '@kiln/ops';
import type { LoadedDefinition } from '@kiln/llb';
import {
  INCARNATION_HEADER,
  RESEND_HEADER,
  KilnError,
  control,
  controlService,
  formatPlatform,
  parsePlatform,
  platformFromPb,
  platformToPb,
  toLong,
} from '@kiln/protocol';
import { toGrpcStatus } from '@kiln/protocol/server';
import type { Platform, pb } from '@kiln/protocol';
import type { Logger } from 'pino';
import { pino } from 'pino';
import type { Dispatcher } from '../dispatch/index.js';
import {
  BuildCanceledError,
  BuildNotFoundError,
  DefinitionTooLargeError,
  SolveRequestInvalidError,
  VertexFailedError,
} from '../solver/errors.js';
import { natsContentChecksums } from '../solver/content-checksums.js';
import type { ContentChecksums } from '../solver/content-checksums.js';
import { natsMaterializer } from '../solver/materialize.js';
import type { BuildMetrics } from '../metrics.js';
import { ControlHealth } from './health.js';
import { MAX_RERUNS, sameHolderDelay, solveGraph } from '../solver/solve.js';
import type { Materializer } from '../solver/solve.js';
import type { SolveResult } from '../solver/solve.js';
import { Authenticator, LOCAL_TENANT, requireAdmin } from './auth.js';
import type { Caller } from './auth.js';
import { BuildRegistry } from './builds.js';
import { checkEntitlements, requestedEntitlements, sourceLines } from './entitlements.js';
import type { Build, BuildRegistryOptions } from './builds.js';
import { progressFrame, vertexFrame } from './events.js';
import { RegistryClient } from '@kiln/registry';
import { checkExporters, runExports } from './exports.js';
import { parseAttestAttrs, provenanceAttestation } from './provenance.js';
import {
  checkCacheOptions,
  importedLookup,
  loadCacheImports,
  runCacheExports,
  withInlineCache,
} from './remote-cache.js';
import type { LoadedImport } from './remote-cache.js';
import { farmDiskUsage, farmPrune } from './prune.js';
import type { PlatformResult } from './exports.js';
import { localSyncRequest } from './context-sync.js';
import { SessionManager, sessionOwner } from './session.js';
import type { ClientSession, SessionCall } from './session.js';
import type { SessionMetaResolver } from '../registry-meta-resolver.js';
import type { CredentialsProvider } from '@kiln/registry';
import type { BlobStore } from '@kiln/store';
import { dockerfileSource } from './frontend-inputs.js';
import type { TenantLimits } from './tenant-limits.js';

type SolveRequest = InstanceType<typeof control.SolveRequest>;
type StatusRequest = InstanceType<typeof control.StatusRequest>;

/** Reads W3C trace context keys from gRPC metadata. */
const metadataGetter: TextMapGetter<grpc.Metadata> = {
  keys: (md) => Object.keys(md.getMap()),
  get: (md, key) => {
    const v = md.get(key)[0];
    return v === undefined ? undefined : String(v);
  },
};

export interface ControlServerOptions extends BuildRegistryOptions {
  dispatcher: Pick<Dispatcher, 'submit' | 'cancel' | 'bus'> &
    Partial<Pick<Dispatcher, 'forgetResult' | 'close'>>;
  /** Image config lookup for the Dockerfile frontend's base images. */
  metaResolver?: SessionMetaResolver;
  /** Platform of ops that name none (`os/arch[/variant]`). Default `linux/amd64`. */
  defaultPlatform?: string;
  /** A child logger is made per build (`buildId`) and vertex (`vertex`). Default: silent. */
  log?: Logger;
  /**
   * The farm's content store: local directories synced through sessions go in it, exporters'
   * artifacts are read from it. Without it, builds can use neither.
   */
  store?: BlobStore;
  /**
   * The clients of this farm run on its machine and may read `store` (a filesystem store): the
   * local farm's. A client whose session names that directory (`SessionHello.local_store`) then
   * gets artifacts by reference and copies them from the store, instead of their bytes streamed.
   */
  storeReadByClients?: boolean;
  /** How long a Solve waits for its session's stream to open. Default 10 s. */
  sessionWaitMs?: number;
  /**
   * How long the solver waits for a worker's content checksum of an input read through selectors
   * (selector-level cache keys; on no answer the input's result id keys it). Default 3 s; 0 turns
   * content checksums off.
   */
  checksumTimeoutMs?: number;
  /**
   * Who may call, as which tenant, with which entitlements. Default: no authentication, every
   * caller is the `local` tenant and no entitlement is allowed.
   */
  auth?: Authenticator;
  /** Tenants share cache keys and cache mounts (a farm of one trusted team). Default: not. */
  sharedCache?: boolean;
  /** Each tenant's RUN limits, sent in its tasks (workers cap them by their own). */
  tenantLimits?: ReadonlyMap<string, TenantLimits>;
  /**
   * Registries spoken to over plain HTTP by `type=registry` cache imports and exports (loopback
   * ones always are). Credentials are the caller's (its session's docker config), as for pulls.
   */
  insecureRegistries?: readonly string[];
  /**
   * After the caller's, the scheduler's own docker config for cache imports and exports (the
   * farm's `--farm-registry-credentials`). Default: never.
   */
  farmRegistryCredentials?: boolean;
  /**
   * Bounds on the Dockerfile frontend's work per Dockerfile; `maxDefinitionBytes` also bounds a
   * Solve's own Definition (and the gRPC messages the server takes). Defaults: FrontendLimits'.
   */
  frontendLimits?: Partial<FrontendLimits>;
  /** Build and vertex counters (the scheduler's `SchedulerMetrics`); none when absent. */
  metrics?: BuildMetrics;
}

/** What a solve reported, as `SolveResponse.exporter_response` (until exporters exist). */
function exporterResponse(results: PlatformResult[]): Record<string, string> {
  const describe = (s: SolveResult) => ({
    id: s.result.resultId ?? '',
    worker: s.workerId,
    layers: (s.result.layers ?? []).map((l) => ({
      digest: l.digest,
      diffId: l.diffId,
      size: Number(l.size),
      mediaType: l.mediaType,
    })),
  });
  const out: Record<string, string> = {};
  if (results.length === 1) {
    const only = results[0]!;
    const d = describe(only.solved);
    out['result.id'] = d.id;
    out['result.worker'] = d.worker;
    out['result.layers'] = JSON.stringify(d.layers);
    out['result.platform'] = only.name;
    out['containerimage.config'] = only.imageConfigJson;
    return out;
  }
  out['result.platforms'] = JSON.stringify(
    results.map((r) => ({
      platform: r.name,
      ...describe(r.solved),
      config: r.imageConfigJson,
    })),
  );
  return out;
}

/**
 * A vertex failure with the source lines (e.g. of the Dockerfile) the definition's source map
 * gives for its vertex, as `details.sourceLines` (`start-end,...`), for the client to show.
 */
function withSourceLines(
  e: unknown,
  source: pb.ISource | null | undefined,
  graph: LoadedDefinition,
): unknown {
  if (!(e instanceof VertexFailedError)) return e;
  const digest = e.details.digest;
  if (typeof digest !== 'string') return e;
  // A vertex the frontend gave no lines (the http or git source of an `ADD URL`) is shown at
  // the lines of the ops that read it (the ADD's copy).
  const lines =
    sourceLines(source, digest) ||
    [...new Set((dependents(graph).get(digest) ?? []).map((d) => sourceLines(source, d)))]
      .filter(Boolean)
      .join(',');
  if (lines) e.details.sourceLines = lines;
  return e;
}

/** The registry credentials a session's client offers, as `@kiln/registry` takes them. */
function sessionCredentials(session: ClientSession): CredentialsProvider {
  return async (host) => {
    const r = await session.credentials(host);
    return 'username' in r ? { username: r.username, password: r.secret } : undefined;
  };
}

function workerRecord(w: WorkerInfo): InstanceType<typeof control.WorkerRecord> {
  const plat = (emulated: boolean) =>
    w.platforms.filter((p) => p.emulated === emulated).map((p) => platformToPb(p));
  return control.WorkerRecord.create({
    id: w.id,
    labels: w.labels,
    platforms: plat(false),
    emulatedPlatforms: plat(true),
    slots: w.slots,
    busySlots: Math.max(0, w.slots - w.freeSlots),
    freeDiskBytes: toLong(Math.trunc(w.freeDiskBytes)),
    lastHeartbeatUnixNano: toLong(BigInt(Math.trunc(w.heartbeatAt)) * 1_000_000n),
  });
}

/** `id==X` (or `id=X`) and `labels.K==V` filters, all of which must match. */
function matchesFilters(w: WorkerInfo, filters: readonly string[]): boolean {
  return filters.every((f) => {
    const m = /^([^=!]+)(==|=|!=)(.*)$/.exec(f);
    if (!m) return true;
    const [, key = '', op, want] = m;
    const have =
      key === 'id' ? w.id : key.startsWith('labels.') ? w.labels[key.slice(7)] : undefined;
    return op === '!=' ? have !== want : have === want;
  });
}

export class ControlServer {
  readonly builds: BuildRegistry;
  readonly sessions: SessionManager;
  readonly #o: ControlServerOptions;
  readonly #log: Logger;
  readonly #defaultPlatform: Platform;
  readonly #maxDefinitionBytes: number;
  readonly #checksums: ContentChecksums | undefined;
  readonly #materialize: Materializer;
  readonly #auth: Authenticator;
  #server: grpc.Server | undefined;
  #closing = false;
  /**
   * This process's incarnation, sent with Status's headers: a client resuming with the `sinceSeq`
   * of another (a scheduler that died) starts from 0 here.
   */
  readonly incarnation = randomUUID();
  /** `grpc.health.v1.Health` on the same server (health.ts): SERVING once listening. */
  readonly health = new ControlHealth();

  constructor(o: ControlServerOptions) {
    this.#o = o;
    this.builds = new BuildRegistry(o);
    this.#log = o.log ?? pino({ level: 'silent' });
    this.#auth = o.auth ?? new Authenticator();
    this.sessions = new SessionManager({
      nc: o.dispatcher.bus.nc,
      tasks: o.dispatcher.bus.tasks,
      ...(o.store ? { store: o.store } : {}),
      log: this.#log.child({ component: 'session' }),
      onSynced: (listing) => this.#o.metrics?.contextSynced(listing),
      ...(o.storeReadByClients ? { storeReadByClients: true } : {}),
    });
    this.#defaultPlatform = parsePlatform(o.defaultPlatform ?? 'linux/amd64');
    this.#maxDefinitionBytes = frontendLimits(o.frontendLimits).maxDefinitionBytes;
    const lostLog = this.#log.child({ component: 'materialize' });
    this.#materialize = natsMaterializer(o.dispatcher.bus.nc, {
      onLost: (e) => lostLog.info(e, 'result lost'),
    });
    const checksumLog = this.#log.child({ component: 'checksums' });
    this.#checksums =
      o.checksumTimeoutMs === 0
        ? undefined
        : natsContentChecksums(o.dispatcher.bus.nc, {
            timeoutMs: o.checksumTimeoutMs ?? 3_000,
            onFallback: (e) => checksumLog.debug(e, 'content checksum unavailable'),
          });
  }

  /**
   * Serves on `addr` (`host:port`, port 0 for a free one); resolves with the bound port, or
   * rejects with `ListenFailedError` (`LISTEN_FAILED`: port in use...).
   */
  async listen(addr: string, creds = grpc.ServerCredentials.createInsecure()): Promise<number> {
    const server = new grpc.Server({
      // A Definition up to its bound fits, with room for the request's other fields; above,
      // #load refuses it typed (grpc-js's own refusal is at 4 MiB by default).
      'grpc.max_receive_message_length': this.#maxDefinitionBytes + 4 * 1024 * 1024,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc.http2.min_ping_interval_without_data_ms': 5_000,
    });
    server.addService(controlService, this.handlers());
    this.health.addToServer(server);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(addr, creds, (err, p) =>
        err ? reject(new ListenFailedError('control api', addr, err)) : resolve(p),
      ),
    );
    this.#server = server;
    this.health.setServing(true);
    this.#log.info({ addr, port }, 'control api listening');
    return port;
  }

  /**
   * Stops serving: running builds end with a retryable `SCHEDULER_UNAVAILABLE`, open calls end.
   * The dispatcher is closed first, so that their tasks are left, not cancelled: their records
   * stay for the scheduler the clients resume on (a task running goes on).
   */
  async close(): Promise<void> {
    this.#closing = true;
    this.health.drain();
    await this.#o.dispatcher.close?.();
    this.builds.close();
    this.sessions.close();
    const s = this.#server;
    this.#server = undefined;
    if (!s) return;
    await new Promise<void>((resolve) => {
      s.tryShutdown(() => resolve());
      // Open Status streams of finished builds end by themselves; anything else is forced.
      setTimeout(() => {
        s.forceShutdown();
        resolve();
      }, 2_000).unref();
    });
  }

  /** The grpc-js handlers (for embedding in another server). */
  handlers(): grpc.UntypedServiceImplementation {
    const gc = { nc: this.#o.dispatcher.bus.nc, bus: this.#o.dispatcher.bus };
    return {
      solve: (
        call: grpc.ServerUnaryCall<SolveRequest, unknown>,
        cb: grpc.sendUnaryData<unknown>,
      ) => {
        Promise.resolve()
          .then(() => this.#solve(call, this.#auth.authenticate(call)))
          .then(
            (r) => cb(null, r),
            (e: unknown) => cb(toGrpcStatus(e)),
          );
      },
      status: (call: grpc.ServerWritableStream<StatusRequest, unknown>) => {
        Promise.resolve()
          .then(() => this.#status(call, this.#auth.authenticate(call)))
          .then(
            () => call.end(),
            (e: unknown) => call.emit('error', Object.assign(new Error(), toGrpcStatus(e))),
          );
      },
      listWorkers: (
        call: grpc.ServerUnaryCall<InstanceType<typeof control.ListWorkersRequest>, unknown>,
        cb: grpc.sendUnaryData<unknown>,
      ) => {
        // Worker records hold no build's data: any authenticated caller may list them.
        Promise.resolve()
          .then(() => this.#auth.authenticate(call))
          .then(() => listWorkers(this.#o.dispatcher.bus.workers))
          .then(
            (ws) =>
              cb(
                null,
                control.ListWorkersResponse.create({
                  record: ws
                    .filter((w) => matchesFilters(w, call.request.filter))
                    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
                    .map(workerRecord),
                }),
              ),
            (e: unknown) => cb(toGrpcStatus(e)),
          );
      },
      cancel: (
        call: grpc.ServerUnaryCall<InstanceType<typeof control.CancelRequest>, unknown>,
        cb: grpc.sendUnaryData<unknown>,
      ) => {
        try {
          this.cancel(call.request.ref, this.#auth.authenticate(call).tenant);
          cb(null, control.CancelResponse.create());
        } catch (e) {
          cb(toGrpcStatus(e));
        }
      },
      // The workers' caches are the farm's and hold every tenant's results: only an admin tenant
      // may see and prune them (each worker keeps what running builds hold).
      diskUsage: (
        call: grpc.ServerUnaryCall<InstanceType<typeof control.DiskUsageRequest>, unknown>,
        cb: grpc.sendUnaryData<unknown>,
      ) => {
        Promise.resolve()
          .then(() => requireAdmin(this.#auth.authenticate(call), 'kiln du'))
          .then(() => farmDiskUsage(gc, call.request.filter ?? []))
          .then(
            (record) => cb(null, control.DiskUsageResponse.create({ record })),
            (e: unknown) => cb(toGrpcStatus(e)),
          );
      },
      prune: (
        call: grpc.ServerWritableStream<InstanceType<typeof control.PruneRequest>, unknown>,
      ) => {
        Promise.resolve()
          .then(() => requireAdmin(this.#auth.authenticate(call), 'kiln prune'))
          .then(() => farmPrune(gc, call.request, (r) => call.write(r)))
          .then(
            () => call.end(),
            (e: unknown) => call.emit('error', Object.assign(new Error(), toGrpcStatus(e))),
          );
      },
      session: (call: SessionCall) => {
        let caller: Caller;
        try {
          caller = this.#auth.authenticate(call);
        } catch (e) {
          call.emit('error', Object.assign(new Error(), toGrpcStatus(e)));
          return;
        }
        this.sessions.attach(call, caller.tenant);
      },
    };
  }

  /** Cancels the tenant's build; its tasks shared with other builds go on. */
  cancel(ref: string, tenant = LOCAL_TENANT): void {
    const b = this.builds.get(ref, tenant);
    if (!b) throw new BuildNotFoundError(ref);
    if (b.state === 'done') return;
    this.#log.info({ buildId: ref }, 'build cancel requested');
    b.abort.abort();
    this.#o.dispatcher.cancel(ref);
  }

  async #solve(call: grpc.ServerUnaryCall<SolveRequest, unknown>, caller: Caller) {
    const req = call.request;
    const ref = req.ref || randomUUID();
    if (req.ref && call.metadata.get(RESEND_HEADER).length > 0) {
      // The client gave up its first call (a broken connection): the build still running for
      // that call is cancelled, so that this one starts afresh (BuildRegistry.start). One that
      // ended (its answer lost with the connection, or its exports cut) starts afresh at once:
      // its finished steps come back CACHED and its exports are sent again.
      const old = this.builds.get(ref, caller.tenant);
      if (old?.state === 'running' && !old.clientGone) {
        this.#log.info({ buildId: ref }, 'solve sent again: cancelling the first');
        old.clientGone = true;
        old.abort.abort();
      } else if (old?.state === 'done') old.clientGone = true;
    }
    const build = this.builds.start(ref, caller.tenant);
    const log = this.#log.child({ buildId: ref, tenant: caller.tenant });
    const onCancelled = (): void => {
      if (build.state !== 'running') return;
      log.info('client went away: cancelling build');
      build.clientGone = true;
      build.abort.abort();
    };
    call.on('cancelled', onCancelled);
    let unserve: (() => void) | undefined;
    log.info({ frontend: req.frontend || undefined }, 'build started');
    this.#o.metrics?.buildStarted();
    // The client's trace context (W3C traceparent in the call's metadata) parents the build.
    const span = tracer().startSpan(
      SpanName.build,
      { attributes: { [Attr.buildId]: ref } },
      propagation.extract(context.active(), call.metadata, metadataGetter),
    );
    try {
      const startedOn = new Date();
      checkExporters(req.exporters, !!req.sessionId, req.frontendAttrs);
      const attest = parseAttestAttrs(req.frontendAttrs);
      checkCacheOptions(req.cacheImports, req.cacheExports, !!req.sessionId);
      if ((req.cacheImports.length > 0 || req.cacheExports.length > 0) && !this.#o.store)
        throw new SolveRequestInvalidError('cache import and export need a content store');
      const requested = requestedEntitlements(req.entitlements);
      const session = req.sessionId
        ? await this.sessions.waitFor(
            req.sessionId,
            sessionOwner(call, caller.tenant),
            this.#o.sessionWaitMs ?? 10_000,
            build.abort.signal,
          )
        : undefined;
      // Only this build's tasks, on the workers holding their claims, may reach the session.
      unserve = session?.serve(ref);
      const targets = await this.#load(req, session);
      checkEntitlements(targets, requested, caller);
      const cacheNamespace = this.#o.sharedCache ? '' : caller.tenant;
      // Cache imports and exports reach registries with the caller's credentials (one client per
      // build, so one caller's tokens never serve another), the farm's only when it says so.
      const registry = new RegistryClient({
        insecureRegistries: this.#o.insecureRegistries ?? [],
        ...(session ? { credentials: sessionCredentials(session) } : {}),
        ...(this.#o.farmRegistryCredentials ? {} : { dockerConfig: false as const }),
      });
      const imports = await loadCacheImports(req.cacheImports, session, registry, log, (v) =>
        build.status.push(vertexFrame(v)),
      );
      // Platforms are solved concurrently; the first failure stops the others (they then fail
      // with BuildCanceledError, so the first real error is the one reported), and the build
      // ends only once every platform's solve has settled. `durable`: the results' blobs must
      // exist when it returns (without an exporter the response's `result.layers` is what the
      // client gets; an exporter makes what it needs itself).
      const solveAll = async (durable: boolean): Promise<PlatformResult[]> => {
        const settled = await Promise.allSettled(
          targets.map(async (t) => {
            try {
              return {
                platform: platformToPb(t.platform),
                name: formatPlatform(t.platform),
                definition: t.definition,
                imageConfigJson:
                  t.imageConfigJson ??
                  JSON.stringify({ architecture: t.platform.architecture, os: t.platform.os }),
                solved: await context.with(trace.setSpan(context.active(), span), () =>
                  this.#run(build, t.graph, platformToPb(t.platform), {
                    sessionId: req.sessionId,
                    cacheNamespace,
                    limits: this.#o.tenantLimits?.get(caller.tenant),
                    log,
                    durable,
                    imports,
                    buildkitKeys: req.cacheImports.length > 0 || req.cacheExports.length > 0,
                    session,
                  }),
                ),
              };
            } catch (e) {
              build.abort.abort();
              throw withSourceLines(e, t.source, t.graph);
            }
          }),
        );
        const failures = settled.flatMap((r): unknown[] =>
          r.status === 'rejected' ? [r.reason] : [],
        );
        if (failures.length > 0)
          throw failures.find((e) => !(e instanceof BuildCanceledError)) ?? failures[0];
        return settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      };
      let results = await solveAll(req.exporters.length === 0);
      let response = exporterResponse(results);
      if (req.exporters.length > 0) {
        const inline = req.cacheExports.some((c) => c.type === 'inline');
        // BuildKit's provenance: made once the solve is done, before the export.
        const withAttestations = (rs: PlatformResult[]): PlatformResult[] => {
          const prov = attest.provenance;
          if (!prov) return rs;
          const finishedOn = new Date();
          return rs.map((r) => ({
            ...r,
            attestations: [
              provenanceAttestation({
                mode: prov.mode,
                builderId: prov.builderId,
                frontend: req.frontend,
                attrs: req.frontendAttrs,
                definition: r.definition ?? {},
                buildPlatform: this.#defaultPlatform,
                buildId: ref,
                startedOn,
                finishedOn,
                vertices: r.solved.vertices,
              }),
            ],
          }));
        };
        const exportAll = () =>
          runExports(req.exporters, withAttestations(inline ? withInlineCache(results) : results), {
            sbom: !!attest.sbom,
            frontendAttrs: req.frontendAttrs,
            submit: (t, opts) => this.#o.dispatcher.submit(t, opts),
            store: this.#o.store,
            session,
            buildId: ref,
            sessionId: req.sessionId,
            cacheNamespace,
            signal: build.abort.signal,
            onVertex: (v) => build.status.push(vertexFrame(v)),
          });
        let exported: Record<string, string> | undefined;
        for (let round = 0; !exported; round++) {
          try {
            exported = await exportAll();
          } catch (e) {
            if (!(e instanceof KilnError) || e.code !== INPUT_LOST_CODE || round >= MAX_RERUNS)
              throw e;
            // A result's holder died before its export: solve again, this time making the
            // results blobs (a lost one reruns), and export those. Not at once after the first
            // round: the export may have joined an attempt already failing on the same holder
            // (restarting on its state dir), as the solver's reruns wait.
            log.info({ resultId: e.details.resultId, round }, 'export input lost: solving again');
            if (round > 0) await sameHolderDelay(round - 1, build.abort.signal);
            results = await solveAll(true);
            response = exporterResponse(results);
          }
        }
        Object.assign(response, exported);
      }
      if (req.cacheExports.length > 0) {
        const streamed = await runCacheExports(req.cacheExports, results, {
          store: this.#o.store!,
          registry,
          session,
          materialize: this.#materialize,
          ...(imports.length > 0 ? { imported: importedLookup(imports, this.#o.store!) } : {}),
          log,
        });
        response['export.count'] = String(Number(response['export.count'] ?? 0) + streamed);
      }
      log.info('build done');
      this.#o.metrics?.buildFinished('success');
      return control.SolveResponse.create({ exporterResponse: response });
    } catch (e) {
      const err = this.#closing
        ? new KilnError('SCHEDULER_UNAVAILABLE', 'the scheduler is shutting down', {
            cause: e,
            retryable: true,
            details: { buildId: ref },
          })
        : e instanceof KilnError
          ? e
          : new KilnError('INTERNAL', String(e), { cause: e });
      log.warn({ code: err.code, vertex: err.details.digest, err: err.message }, 'build failed');
      this.#o.metrics?.buildFinished(err.code === 'BUILD_CANCELED' ? 'canceled' : 'failure');
      span.recordException(err);
      span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
      throw err;
    } finally {
      unserve?.();
      span.end();
      call.off('cancelled', onCancelled);
      this.builds.finish(ref, build);
    }
  }

  async #load(
    req: SolveRequest,
    session: ClientSession | undefined,
  ): Promise<
    {
      graph: LoadedDefinition;
      platform: Platform;
      imageConfigJson?: string;
      source?: pb.ISource | null;
      definition: pb.IDefinition;
    }[]
  > {
    if (req.definition?.def?.length) {
      if (req.frontend)
        throw new SolveRequestInvalidError('a solve takes a definition or a frontend, not both');
      const size = control.SolveRequest.encode(
        control.SolveRequest.create({ definition: req.definition }),
      ).finish().length;
      if (size > this.#maxDefinitionBytes)
        throw new DefinitionTooLargeError(size, this.#maxDefinitionBytes);
      const graph = parseDefinition(req.definition);
      // The build's platform is the result's own when it names one (an arm64-only graph is an
      // arm64 build: its result and exported image say so), else the scheduler's default.
      const p = graph.ops.get(graph.result.digest)?.op.platform;
      return [
        {
          graph,
          platform: platformFromPb(p) ?? this.#defaultPlatform,
          source: req.definition.Source,
          definition: req.definition,
        },
      ];
    }
    if (!req.frontend)
      throw new SolveRequestInvalidError('a solve needs a definition or a frontend');
    const frontend = getFrontend(req.frontend);
    if (!frontend)
      throw new SolveRequestInvalidError(`unknown frontend ${JSON.stringify(req.frontend)}`, {
        frontend: req.frontend,
      });
    const attrs = { ...req.frontendAttrs };
    const resolver = this.#o.metaResolver;
    // Base images resolve with the caller's registry credentials (its session's): one provider
    // for the build, so that one registry client (its tokens, its connections) serves every FROM
    // of it, and each (image, platform) once per build, as BuildKit's frontend resolves it (two
    // stages FROM the same image do not ask the registry again).
    const credentials = session ? sessionCredentials(session) : undefined;
    const resolved = new Map<string, ReturnType<MetaResolver>>();
    const metaResolver: MetaResolver | undefined = resolver
      ? (ref, platform) => {
          const key = JSON.stringify([ref, platform]);
          let p = resolved.get(key);
          if (!p)
            resolved.set(key, (p = resolver(ref, platform, credentials ? { credentials } : {})));
          return p;
        }
      : undefined;
    const src = dockerfileSource(req.frontendInputs, attrs);
    const res = await frontend.solve({
      dockerfile: src.dockerfile,
      ...(src.dockerignore ? { dockerignore: src.dockerignore } : {}),
      ...(src.namedDockerignores ? { namedDockerignores: src.namedDockerignores } : {}),
      opts: attrs,
      ...(metaResolver ? { metaResolver } : {}),
      ...(req.sessionId ? { sessionId: req.sessionId } : {}),
      buildPlatform: this.#defaultPlatform,
      ...(this.#o.frontendLimits ? { limits: this.#o.frontendLimits } : {}),
    });
    return res.platforms.map((p) => ({
      graph: parseDefinition(p.definition.toProto()),
      definition: p.definition.toProto(),
      source: p.definition.source,
      platform: p.platform,
      imageConfigJson: p.imageConfigJson,
    }));
  }

  #run(
    build: Build,
    graph: LoadedDefinition,
    platform: pb.IPlatform,
    o: {
      sessionId: string;
      cacheNamespace: string;
      limits: TenantLimits | undefined;
      log: Logger;
      durable: boolean;
      imports: readonly LoadedImport[];
      /** The build imports or exports a cache: content links use BuildKit's checksums. */
      buildkitKeys: boolean;
      /** The build's session: its local directories are synced here to key them by content. */
      session: ClientSession | undefined;
    },
  ): Promise<SolveResult> {
    const { log } = o;
    const session = o.session;
    return solveGraph(graph, {
      ...(session && this.#o.store
        ? {
            localContent: async (op: pb.IOp) => {
              const r = localSyncRequest(op);
              // A source the worker would refuse (bad attrs, no such directory) runs as a task,
              // which reports the typed error.
              return r && session.localDirs.has(r.dir) ? session.localContent(r) : undefined;
            },
          }
        : {}),
      ...(o.imports.length > 0 && this.#o.store
        ? { importedCache: importedLookup(o.imports, this.#o.store) }
        : {}),
      buildkitChecksums: o.buildkitKeys,
      ...(o.durable ? { materialize: this.#materialize } : {}),
      submitter: this.#o.dispatcher,
      buildId: build.id,
      defaultPlatform: platform,
      sessionId: o.sessionId,
      cacheNamespace: o.cacheNamespace,
      ...(o.limits ? { limits: o.limits } : {}),
      ...(this.#checksums ? { checksums: this.#checksums } : {}),
      signal: build.abort.signal,
      onVertex: (v) => {
        build.status.push(vertexFrame(v));
        const vlog = log.child({ vertex: v.digest });
        if (v.error) {
          vlog.warn({ name: v.name, err: v.error }, 'vertex failed');
          if (v.error !== 'canceled') this.#o.metrics?.vertexDone('failed');
        } else if (v.completedAt) {
          vlog.debug({ name: v.name, cached: v.cached, worker: v.workerId }, 'vertex done');
          this.#o.metrics?.vertexDone(v.cached ? 'cached' : 'run');
        } else vlog.debug({ name: v.name, cacheKey: v.cacheKey }, 'vertex started');
      },
      onProgress: (digest, p) => {
        const f = progressFrame(digest, p);
        if (f) build.status.push(f);
      },
    });
  }

  async #status(
    call: grpc.ServerWritableStream<StatusRequest, unknown>,
    caller: Caller,
  ): Promise<void> {
    const ref = call.request.ref;
    if (!ref) throw new SolveRequestInvalidError('status needs a build ref');
    const build = this.builds.observe(ref, caller.tenant);
    if (!build) throw new BuildNotFoundError(ref);
    const ac = new AbortController();
    const stop = (): void => ac.abort();
    call.on('cancelled', stop);
    call.on('close', stop);
    // Frames are numbered per process and per build of the id (a build its client left and sent
    // again starts afresh): a reader's since_seq of another is read as 0.
    const ours = `${this.incarnation}/${build.epoch}`;
    const md = new grpc.Metadata();
    md.set(INCARNATION_HEADER, ours);
    call.sendMetadata(md);
    const theirs = call.metadata.get(INCARNATION_HEADER)[0];
    const sinceSeq = theirs === undefined || theirs === ours ? Number(call.request.sinceSeq) : 0;
    try {
      for await (const f of build.status.since(sinceSeq, ac.signal)) {
        if (!call.write(f)) await new Promise((r) => call.once('drain', r));
        if (ac.signal.aborted) return;
      }
      // Stopping: the build goes on elsewhere; the client resumes its status there.
      if (this.#closing)
        throw new KilnError('SCHEDULER_UNAVAILABLE', 'the scheduler is shutting down', {
          retryable: true,
          details: { buildId: ref },
        });
      // A build nobody started within the pending window: never solved here, or lost in a
      // scheduler restart.
      if (build.state === 'pending') throw new BuildNotFoundError(ref);
    } finally {
      call.off('cancelled', stop);
      call.off('close', stop);
    }
  }
}
