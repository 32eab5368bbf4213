/**
 * Dockerfile to LLB (BuildKit's dockerfile2llb/convert.go): stages, their dependencies and which
 * of them the target needs, base images through the metadata resolver, then one dispatch function
 * per instruction, each adding vertices to the stage's State and entries to its image config.
 * Only reachable stages are converted; the build context is one `local` source, filtered by
 * `.dockerignore` and narrowed to the paths the Dockerfile reads.
 */
import { posix } from 'node:path';
import { randomBytes } from 'node:crypto';
import {
  Output,
  State,
  image,
  local,
  marshal,
  mkdir,
  mkfile,
  normalizeImageReference,
  parseImageReference,
  parsePlatform,
  scratch,
  NetMode,
  SecurityMode,
  formatImageReference,
} from '@kiln/llb';
import type {
  Definition,
  HostIP,
  MarshalOptions,
  MountSpec,
  Platform,
  ProxyEnv,
  ResolveMode,
  Ulimit,
  Vertex,
} from '@kiln/llb';
import { DockerfileError } from '../dockerfile-error.js';
import {
  DEFAULT_FRONTEND_LIMITS,
  DockerfileLimitError,
  ExpansionBudget,
  definitionTooLarge,
  frontendLimits,
} from '../limits.js';
import type { FrontendLimits } from '../limits.js';
import type {
  Command,
  KeyValuePairOptional,
  Location,
  RunCommand,
  Stage,
} from '../instructions/commands.js';
import { kvString } from '../instructions/commands.js';
import { withSuggestion } from '../instructions/go-helpers.js';
import { parseCommand, parseInstructions } from '../instructions/parse.js';
import type { ParsedInstructions } from '../instructions/parse.js';
import { parseMount } from '../instructions/runmount.js';
import type { Mount } from '../instructions/runmount.js';
import { chompHeredocContent, parseHeredoc } from '../parser/heredoc.js';
import { parse } from '../parser/parser.js';
import { emptyEnv } from '../shell/env.js';
import type { EnvGetter } from '../shell/env.js';
import { ShellLex } from '../shell/lex.js';
import type { DispatchOpt } from './common.js';
import {
  dfCmd,
  getEnv,
  joinRoot,
  prefixCommand,
  processCmdEnv,
  uppercaseCmd,
  withLocation,
} from './common.js';
import { dispatchCopy } from './convert-copy.js';
import { dispatchRunMounts, withSecretEnvMask } from './convert-runmount.js';
import { DispatchState, DispatchStates, allReachableStages } from './dispatch-state.js';
import type { DispatchCommand } from './dispatch-state.js';
import { formatPortMap, parsePortSpecs, validateSignal } from './expose.js';
import {
  goTime,
  DEFAULT_PATH_ENV,
  addEnv,
  cloneImage,
  commitToHistory,
  emptyImage,
  goQuoteSliceQ,
  goSliceV,
  healthcheckHistory,
  parseImageConfig,
} from './image-config.js';
import type { ImageConfig } from './image-config.js';
import { autoDetectPlatform, buildPlatformOpt, defaultArgs, defaultShell } from './platform.js';
import { findNamedContext } from './named-context.js';
import type { NamedContext } from './named-context.js';
import { SourceLocations } from './source-map.js';
import type { PlatformOpt } from './platform.js';

const EMPTY_IMAGE_NAME = 'scratch';

/** What the metadata resolver returns for an image: its resolved name, digest and config. */
export interface ImageMetadata {
  /** The reference actually resolved (may differ from the one asked, e.g. normalized). */
  ref: string;
  /** The manifest digest; the base image is pinned to it (`name:tag@digest`). */
  digest?: string;
  /** The image config: JSON text, bytes or an already parsed object. */
  config: string | Uint8Array | object;
}

/** Looks up an image's config for a platform (BuildKit's ImageMetaResolver). */
export type MetaResolver = (ref: string, platform: Platform) => Promise<ImageMetadata>;

/** A resolver that answers at once (configs known in advance: tests, benchmarks, caches). */
export type SyncMetaResolver = (ref: string, platform: Platform) => ImageMetadata;

interface LookupRequest {
  ref: string;
  origName: string;
  platform: Platform;
  loc: Stage;
}

interface LookupResult {
  ref: string;
  digest: string | undefined;
  image: ImageConfig;
}

function lookupResult(req: LookupRequest, meta: ImageMetadata): LookupResult {
  let img: ImageConfig;
  try {
    img = parseImageConfig(meta.config);
  } catch (err) {
    throw withLocation(`failed to parse image config: ${(err as Error).message}`, req.loc);
  }
  return { ref: meta.ref, digest: meta.digest, image: img };
}

function lookupError(req: LookupRequest, err: unknown): DockerfileError {
  return withLocation(
    new Error(`${req.origName}: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
    }),
    req.loc,
  );
}

async function lookup(resolver: MetaResolver, req: LookupRequest): Promise<LookupResult> {
  let meta: ImageMetadata;
  try {
    meta = await resolver(req.ref, req.platform);
  } catch (err) {
    throw lookupError(req, err);
  }
  return lookupResult(req, meta);
}

function lookupSync(resolver: SyncMetaResolver, req: LookupRequest): LookupResult {
  let meta: ImageMetadata;
  try {
    meta = resolver(req.ref, req.platform);
  } catch (err) {
    throw lookupError(req, err);
  }
  return lookupResult(req, meta);
}

export interface ConvertOptions {
  /** Bounds on the work of this conversion (see FrontendLimits); generous defaults. */
  limits?: Partial<FrontendLimits>;
  /** `--build-arg K=V`. */
  buildArgs?: Readonly<Record<string, string>>;
  /** The stage to build; the last one by default. */
  target?: string;
  /** One target platform; the build platform by default. */
  targetPlatform?: Platform;
  /** Several target platforms: one result per platform. */
  targetPlatforms?: readonly Platform[];
  /** Where RUN executes; the host's platform by default. */
  buildPlatform?: Platform;
  /** The name of the context source (`local://context`). */
  contextName?: string;
  /** `--label K=V`: added to the final image config. */
  labels?: Readonly<Record<string, string>>;
  /** Image config lookup; without one, base images are used without their config. */
  metaResolver?: MetaResolver;
  /** `.dockerignore` patterns, sent as the context's exclude patterns. */
  dockerignore?: readonly string[];
  /** `--no-cache`: true for every stage, or the names of the stages to rebuild. */
  ignoreCache?: boolean | readonly string[];
  /** The client session the context comes from (makes the context source stable across marshals). */
  sessionId?: string;
  /** Prefix of cache mount ids (BuildKit's BUILDKIT_CACHE_MOUNT_NS). */
  cacheIdNamespace?: string;
  /** Prefix step names with the platform; default: more than one target platform. */
  multiPlatform?: boolean;
  /** Use this state as the build context instead of `local(contextName)`. */
  mainContext?: State;
  /** How base images are resolved (`image-resolve-mode`): `pull` always checks the registry. */
  imageResolveMode?: ResolveMode;
  /** `--add-host`: extra /etc/hosts entries for RUN. */
  extraHosts?: readonly HostIP[];
  /** `--hostname` of RUN containers. */
  hostname?: string;
  /**
   * Named contexts (`--build-context`), by `NAME` or `NAME::os/arch`: BuildKit's `context:NAME`
   * attribute values (`docker-image://REF`, `local:DIR`, git and http URLs; see named-context.ts).
   */
  namedContexts?: Readonly<Record<string, string>>;
  /**
   * The `.dockerignore` patterns of named context directories, by `local:DIR`'s `DIR`: their
   * sources exclude them, as BuildKit's frontend does with each directory's own ignore file.
   */
  namedContextExcludes?: Readonly<Record<string, readonly string[]>>;
  /** `force-network-mode` (`--network`): the network of every RUN without its own `--network`. */
  networkMode?: NetMode;
  /** `shm-size` (`--shm-size`): a tmpfs of this many bytes on /dev/shm in every RUN. */
  shmSize?: number;
  /** `ulimit` (`--ulimit`): rlimits of every RUN. */
  ulimits?: readonly Ulimit[];
}

/** The conversion for one target platform. */
export interface ConvertResult {
  platform: Platform;
  /** The final state of the target stage. */
  state: State;
  /** The image config of the result, history included. */
  imageConfig: ImageConfig;
  /** The config of the target's base image as resolved, if any. */
  baseImageConfig: ImageConfig | undefined;
  /** The target stage's name (`stage-N` when unnamed). */
  stageName: string;
  /** Whether some reachable stage ignores the cache. */
  ignoreCache: boolean;
  /** @internal the ops made for instructions, for the source map (see marshalResult). */
  readonly sourceLocations: SourceLocations;
  /** @internal the Dockerfile, for the source map. */
  readonly source: string;
  /** @internal the conversion's bounds (marshalResult checks the Definition's size). */
  readonly limits?: FrontendLimits;
}

/**
 * The build context: its final source is known only once every stage has been converted (the
 * paths they read become its followPaths), so states start from this placeholder vertex, which
 * marshals as the real source (BuildKit's mutableOutput).
 */
class DeferredContext implements Vertex {
  private out: Output | undefined;

  set(o: Output): void {
    this.out = o;
  }

  private target(): Output {
    if (!this.out) throw new Error('build context used before it was resolved');
    return this.out;
  }

  index(): number {
    return this.target().index();
  }

  inputs(): readonly Output[] {
    return this.target().vertex.inputs();
  }

  marshal(ctx: Parameters<Vertex['marshal']>[0]): ReturnType<Vertex['marshal']> {
    return ctx.get(this.target().vertex);
  }
}

function proxyEnvFromBuildArgs(args: Readonly<Record<string, string>>): ProxyEnv | undefined {
  const pe: ProxyEnv = {};
  let set = false;
  for (const k of Object.keys(args).sort()) {
    const v = args[k]!;
    switch (k.toLowerCase()) {
      case 'http_proxy':
        pe.httpProxy = v;
        set = true;
        break;
      case 'https_proxy':
        pe.httpsProxy = v;
        set = true;
        break;
      case 'ftp_proxy':
        pe.ftpProxy = v;
        set = true;
        break;
      case 'no_proxy':
        pe.noProxy = v;
        set = true;
        break;
      case 'all_proxy':
        pe.allProxy = v;
        set = true;
        break;
    }
  }
  return set ? pe : undefined;
}

function envGetterOfMap(m: ReadonlyMap<string, string>): EnvGetter {
  return { get: (k) => m.get(k), keys: () => [...m.keys()] };
}

function noLine(message: string): DockerfileError {
  return new DockerfileError(message, { startLine: 0 });
}

/** Global ARGs (before the first FROM), with build-arg overrides (BuildKit's buildMetaArgs). */
function buildMetaArgs(
  args: Map<string, string>,
  shlex: ShellLex,
  argCommands: readonly { args: KeyValuePairOptional[]; startLine: number; endLine: number }[],
  buildArgs: Readonly<Record<string, string>>,
): Map<string, string> {
  for (const cmd of argCommands) {
    for (const kp of cmd.args) {
      let value = kp.value;
      if (Object.hasOwn(buildArgs, kp.key)) value = buildArgs[kp.key];
      else if (value !== undefined) {
        try {
          value = shlex.processWord(value, envGetterOfMap(args));
        } catch (err) {
          throw withLocation(err, cmd);
        }
      }
      if (value !== undefined) args.set(kp.key, value);
    }
  }
  return args;
}

/** Finds the stages COPY --from and RUN --mount from= read (BuildKit's toCommand). */
function toCommand(ic: Command, all: DispatchStates, shlex: ShellLex): DispatchCommand {
  const cmd: DispatchCommand = { command: ic, sources: [], isOnBuild: false };
  const lookup = (from: string, loc: Stage | Command): DispatchState => {
    const found = all.findByName(from);
    if (found) return found;
    return new DispatchState(
      {
        name: '',
        baseName: from,
        platform: '',
        sourceCode: '',
        commands: [],
        startLine: loc.startLine,
        endLine: loc.endLine,
        docComment: '',
      },
      true,
    );
  };
  if (ic.kind === 'copy' && ic.from !== '') {
    let res: string;
    try {
      res = shlex.processWordWithMatches(ic.from, emptyEnv).result;
    } catch (err) {
      throw withLocation(err, ic);
    }
    if (res !== ic.from) {
      throw withLocation(
        'variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround',
        ic,
      );
    }
    let stn: DispatchState;
    if (/^[+-]?[0-9]+$/.test(ic.from)) {
      try {
        stn = all.findByIndex(Number(ic.from));
      } catch (err) {
        throw withLocation(err, ic);
      }
    } else {
      stn = lookup(ic.from, ic);
    }
    cmd.sources = [stn];
  }
  if (ic.kind === 'run') {
    cmd.sources = ic.mounts.map((m) =>
      m.from === '' || m.type === 'tmpfs' ? undefined : lookup(m.from, ic),
    );
  }
  return cmd;
}

function validateCircularDependency(states: readonly DispatchState[]): void {
  const visited = new Set<DispatchState>();
  const path = new Set<DispatchState>();
  const visit = (state: DispatchState, current: Command[]): Command[] | undefined => {
    if (visited.has(state)) return undefined;
    visited.add(state);
    path.add(state);
    for (const [dep, c] of state.deps) {
      const next = [...current, c];
      if (path.has(dep)) return next;
      const found = visit(dep, next);
      if (found) return found;
    }
    path.delete(state);
    return undefined;
  };
  for (const state of states) {
    const cmds = visit(state, []);
    if (cmds) {
      const first = cmds[0]!;
      throw new DockerfileError(`circular dependency detected on stage: ${state.stageName}`, {
        startLine: Math.min(...cmds.map((c) => c.startLine)),
        endLine: Math.max(...cmds.map((c) => c.endLine), first.endLine),
      });
    }
  }
}

/** One conversion: everything BuildKit's dispatchContext holds. */
class Converter {
  private readonly all = new DispatchStates();
  private readonly shlex: ShellLex;
  private globalArgs = new Map<string, string>();
  private readonly po: PlatformOpt;
  private readonly buildArgs: Readonly<Record<string, string>>;
  private readonly contextVertex = new DeferredContext();
  private readonly buildContext: State;
  private idCounter = 0;
  private readonly idPrefix = randomBytes(6).toString('hex');
  private readonly locations = new SourceLocations();
  private epoch: Date | undefined;
  private readonly limits: FrontendLimits;

  constructor(
    private readonly source: string,
    private readonly stages: Stage[],
    private readonly metaArgs: {
      args: KeyValuePairOptional[];
      startLine: number;
      endLine: number;
    }[],
    escapeToken: string,
    private readonly opts: ConvertOptions,
    targetPlatform: Platform | undefined,
  ) {
    this.limits = frontendLimits(opts.limits);
    this.shlex = new ShellLex(escapeToken, { budget: new ExpansionBudget(this.limits) });
    this.po = buildPlatformOpt(opts.buildPlatform, targetPlatform);
    this.buildArgs = opts.buildArgs ?? {};
    this.buildContext = State.of(new Output(this.contextVertex, () => this.contextVertex.index()));
  }

  private multiPlatform(): boolean {
    return this.opts.multiPlatform ?? (this.opts.targetPlatforms?.length ?? 0) > 1;
  }

  private isNoCache(name: string): boolean {
    const ic = this.opts.ignoreCache;
    if (ic === undefined || ic === false) return false;
    if (ic === true) return true;
    return ic.includes(name);
  }

  /** Stages, target and dependency graph; then `resolve` yields the image lookups it needs. */
  private prepare(): DispatchState {
    const targetName = this.opts.target || this.stages[this.stages.length - 1]!.name;
    this.globalArgs = buildMetaArgs(
      defaultArgs(this.po, this.buildArgs, targetName),
      this.shlex,
      this.metaArgs,
      this.buildArgs,
    );
    const sde = Object.hasOwn(this.buildArgs, 'SOURCE_DATE_EPOCH')
      ? this.buildArgs.SOURCE_DATE_EPOCH
      : this.globalArgs.get('SOURCE_DATE_EPOCH');
    if (sde) this.epoch = parseSourceDateEpoch(sde);
    this.buildDispatchStates();
    const target = this.resolveTarget();
    this.buildStageDependencyGraph();
    return target;
  }

  private finish(target: DispatchState, reachable: Set<DispatchState>): ConvertResult {
    const ctxPaths = this.dispatchStages(reachable);
    this.finalize(target, ctxPaths);
    let ignoreCache = target.ignoreCache;
    for (const d of reachable) if (d.ignoreCache && !d.unregistered) ignoreCache = true;
    return {
      platform: this.po.targetPlatform,
      state: target.state,
      imageConfig: target.image,
      baseImageConfig: target.baseImg,
      stageName: target.stageName,
      ignoreCache,
      sourceLocations: this.locations,
      source: this.source,
      limits: this.limits,
    };
  }

  async run(resolver: MetaResolver | undefined): Promise<ConvertResult> {
    const target = this.prepare();
    const gen = this.resolveStages(target);
    let step = gen.next();
    while (!step.done) {
      const reqs = step.value;
      const metas = resolver
        ? await Promise.all(reqs.map((r) => lookup(resolver, r)))
        : reqs.map(() => undefined);
      step = gen.next(metas);
    }
    return this.finish(target, step.value);
  }

  runSync(resolver: SyncMetaResolver | undefined): ConvertResult {
    const target = this.prepare();
    const gen = this.resolveStages(target);
    let step = gen.next();
    while (!step.done) {
      const reqs = step.value;
      step = gen.next(reqs.map((r) => (resolver ? lookupSync(resolver, r) : undefined)));
    }
    return this.finish(target, step.value);
  }

  private newId(): string {
    return `${this.idPrefix}${(this.idCounter++).toString(36)}`;
  }

  private buildDispatchStates(): void {
    const env = envGetterOfMap(this.globalArgs);
    this.stages.forEach((st, i) => {
      let baseName: string;
      try {
        baseName = this.shlex.processWordWithMatches(st.baseName, env).result;
      } catch (err) {
        throw withLocation(err, st);
      }
      if (baseName === '') throw withLocation(`base name (${st.baseName}) should not be blank`, st);
      const ds = new DispatchState({ ...st, baseName });
      ds.prefixPlatform = this.multiPlatform();
      if (st.platform !== '') {
        let v: string;
        try {
          v = this.shlex.processWordWithMatches(st.platform, env).result;
        } catch (err) {
          throw withLocation(
            `failed to process arguments for platform ${st.platform}: ${(err as Error).message}`,
            st,
          );
        }
        if (v === '') throw withLocation(`empty platform value from expression ${st.platform}`, st);
        try {
          ds.platform = parsePlatform(v);
        } catch (err) {
          throw withLocation(
            `failed to parse platform ${st.platform}: ${(err as Error).message}`,
            st,
          );
        }
      }
      if (st.name === '') ds.stageName = `stage-${i}`;
      else {
        try {
          ds.named = this.namedContext(st.name, ds.platform);
        } catch (err) {
          throw withLocation(err, st);
        }
      }
      this.all.add(ds);
      let total = ds.stage.baseName !== EMPTY_IMAGE_NAME && !ds.base ? 1 : 0;
      for (const c of ds.stage.commands)
        if (c.kind === 'add' || c.kind === 'copy' || c.kind === 'run' || c.kind === 'workdir')
          total++;
      ds.cmdTotal = total;
      ds.ignoreCache = this.isNoCache(st.name);
    });
  }

  private resolveTarget(): DispatchState {
    if (!this.opts.target) return this.all.last();
    const t = this.all.findByName(this.opts.target);
    if (!t) {
      throw noLine(
        withSuggestion(
          `target stage ${JSON.stringify(this.opts.target)} could not be found`,
          this.opts.target,
          this.all.names(),
          true,
        ),
      );
    }
    return t;
  }

  private addDeps(d: DispatchState, cmd: DispatchCommand): void {
    for (const src of cmd.sources) {
      if (!src) continue;
      d.deps.set(src, cmd.command);
      if (src.unregistered && !this.all.states.includes(src)) this.all.add(src);
    }
  }

  private buildStageDependencyGraph(): void {
    for (const d of [...this.all.states]) {
      // A stage a named context stands for runs none of its commands.
      if (d.named) continue;
      d.commands = d.stage.commands.map((c) => {
        const cmd = toCommand(c, this.all, this.shlex);
        this.addDeps(d, cmd);
        return cmd;
      });
    }
    validateCircularDependency(this.all.states);
    if (this.all.states.length === 1) this.all.states[0]!.stageName = '';
  }

  /**
   * Resolves base images of the stages the target needs, then runs ONBUILD triggers, until no
   * trigger adds a dependency. Yields the image lookups of each round and receives their results.
   */
  private *resolveStages(
    target: DispatchState,
  ): Generator<LookupRequest[], Set<DispatchState>, (LookupResult | undefined)[]> {
    for (;;) {
      const reachable = allReachableStages(target);
      const pending: { d: DispatchState; reachable: boolean }[] = [];
      for (const d of this.all.states) {
        const isReachable = reachable.has(d);
        if (d.base || d.dispatched || d.resolved) continue;
        d.resolved = isReachable;
        if (!d.named && d.stage.baseName !== EMPTY_IMAGE_NAME) {
          try {
            d.baseContext = this.namedContext(d.stage.baseName, d.platform);
          } catch (err) {
            throw withLocation(err, d.stage);
          }
        }
        const nc = d.named ?? d.baseContext;
        if (nc?.kind === 'state') {
          const platform = d.platform ?? this.po.targetPlatform;
          d.state = nc.state.platform(platform);
          d.image = emptyImage(this.po.targetPlatform);
          d.platform = platform;
          if (d.unregistered || d.named) d.dispatched = true;
          continue;
        }
        if (!nc && d.stage.baseName === EMPTY_IMAGE_NAME) {
          d.state = scratch();
          d.image = emptyImage(this.po.targetPlatform);
          d.platform = this.po.targetPlatform;
          if (d.unregistered) d.dispatched = true;
          continue;
        }
        pending.push({ d, reachable: isReachable });
      }
      const reqs: LookupRequest[] = [];
      for (const p of pending) {
        const req = this.baseImageRequest(p.d);
        if (p.reachable) reqs.push(req);
      }
      const metas = reqs.length > 0 ? yield reqs : [];
      let k = 0;
      for (const p of pending)
        this.applyBaseImage(p.d, p.reachable ? metas[k++] : undefined, p.reachable);

      let newDeps = false;
      for (const d of baseFirst(reachable)) {
        d.init();
        const onbuilds = [...(d.image.config.OnBuild ?? [])];
        if (d.base && !d.onBuildInit) {
          for (const c of d.base.commands)
            if (c.command.kind === 'onbuild') onbuilds.push(c.command.expression);
          d.onBuildInit = true;
        }
        if (onbuilds.length > 0) {
          if (this.initOnBuildTriggers(d, onbuilds)) newDeps = true;
          delete d.image.config.OnBuild;
        }
      }
      if (!newDeps) return reachable;
    }
  }

  /** ONBUILD triggers of the base run first in the child stage; they may add dependencies. */
  private initOnBuildTriggers(d: DispatchState, triggers: string[]): boolean {
    let hasNewDeps = false;
    const commands: DispatchCommand[] = [];
    for (const trigger of triggers) {
      let cmd: DispatchCommand;
      try {
        const { ast } = parse(trigger);
        if (ast.children.length !== 1)
          throw new Error('onbuild trigger should be a single expression');
        const node = ast.children[0]!;
        node.startLine = d.stage.startLine;
        node.endLine = d.stage.endLine;
        cmd = toCommand(parseCommand(node), this.all, this.shlex);
      } catch (err) {
        throw withLocation(err, d.stage);
      }
      cmd.isOnBuild = true;
      if (cmd.sources.some((s) => s !== undefined)) hasNewDeps = true;
      commands.push(cmd);
      this.addDeps(d, cmd);
    }
    d.commands = [...commands, ...d.commands];
    d.cmdTotal += commands.length;
    return hasNewDeps;
  }

  /** The named context (`--build-context`) standing for a stage or image name, if any. */
  private namedContext(name: string, platform: Platform | undefined): NamedContext | undefined {
    const contexts = this.opts.namedContexts;
    if (!contexts) return undefined;
    return findNamedContext(
      contexts,
      name,
      platform ?? this.po.targetPlatform,
      this.opts.sessionId,
      this.opts.namedContextExcludes,
    );
  }

  /** Normalizes a stage's base name; the lookup its image needs. */
  private baseImageRequest(d: DispatchState): LookupRequest {
    const nc = d.named ?? d.baseContext;
    if (nc?.kind === 'image') d.stage.baseName = nc.ref;
    const origName = d.stage.baseName;
    let ref: string;
    try {
      ref = normalizeImageReference(origName);
    } catch (err) {
      throw withLocation(
        `failed to parse stage name ${JSON.stringify(origName)}: ${(err as Error).message}`,
        d.stage,
      );
    }
    d.stage.baseName = ref;
    return { ref, origName, platform: d.platform ?? this.po.targetPlatform, loc: d.stage };
  }

  /** Sets a stage's state and config from its base image (BuildKit's resolveBaseImage). */
  private applyBaseImage(
    d: DispatchState,
    meta: LookupResult | undefined,
    reachable: boolean,
  ): void {
    const nc = d.named ?? d.baseContext;
    try {
      let platform = d.platform ?? this.po.targetPlatform;
      let isScratch = false;
      if (reachable && meta) {
        const img = meta.image;
        d.baseImg = cloneImage(img);
        delete img.created;
        if (!d.platform && this.po.implicitTarget)
          platform = autoDetectPlatform(img, platform, this.po.buildPlatforms);
        let named = d.stage.baseName;
        if (meta.ref && meta.ref !== named) named = normalizeImageReference(meta.ref);
        if (meta.digest)
          named = formatImageReference({ ...parseImageReference(named), digest: meta.digest });
        d.stage.baseName = named;
        if (img.rootfs.diff_ids.length === 0)
          isScratch = !(img.history ?? []).some((h) => !h.empty_layer);
        d.image = img;
      } else {
        d.image = emptyImage(platform);
      }
      if (isScratch) {
        d.state = scratch();
      } else {
        d.state = this.locations.locate(
          image(d.stage.baseName, {
            platform,
            ...(this.opts.imageResolveMode ? { resolveMode: this.opts.imageResolveMode } : {}),
            description: dfCmd(d.stage.sourceCode),
            customName:
              nc?.kind === 'image'
                ? nc.customName
                : prefixCommand(
                    d,
                    'FROM ' + d.stage.baseName,
                    this.multiPlatform(),
                    platform,
                    emptyEnv,
                  ),
          }),
          d.stage,
        );
      }
      d.platform = platform;
    } catch (err) {
      throw withLocation(err, d.stage);
    } finally {
      if (d.unregistered || d.named) d.dispatched = true;
    }
  }

  private dispatchOpt(): DispatchOpt {
    return {
      allDispatchStates: this.all,
      globalArgs: this.globalArgs,
      buildArgValues: this.buildArgs,
      shlex: this.shlex,
      buildContext: this.buildContext,
      proxyEnv: proxyEnvFromBuildArgs(this.buildArgs),
      cacheIdNamespace: this.opts.cacheIdNamespace ?? '',
      targetPlatform: this.po.targetPlatform,
      buildPlatforms: this.po.buildPlatforms,
      epoch: this.epoch,
      newId: () => this.newId(),
      locate: (st, loc) => this.locations.locate(st, loc),
      extraHosts: this.opts.extraHosts ?? [],
      shmSize: this.opts.shmSize ?? 0,
      ulimits: this.opts.ulimits ?? [],
    };
  }

  private dispatchStages(reachable: Set<DispatchState>): Set<string> {
    const ctxPaths = new Set<string>();
    const opt = this.dispatchOpt();
    for (const d of this.all.states) {
      if (!reachable.has(d) || d.dispatched) continue;
      d.init();
      d.dispatched = true;
      d.platform ??= this.po.targetPlatform;
      const env = d.image.config.Env ?? [];
      if (!env.some((e) => e.split('=', 1)[0] === 'PATH') && d.platform.os !== 'windows') {
        d.image.config.Env = [...env, `PATH=${DEFAULT_PATH_ENV}`];
      }
      for (const e of d.image.config.Env ?? []) {
        const i = e.indexOf('=');
        d.state = i < 0 ? d.state.addEnv(e, '') : d.state.addEnv(e.slice(0, i), e.slice(i + 1));
      }
      if (this.opts.hostname) d.state = d.state.hostname(this.opts.hostname);
      if (this.opts.networkMode !== undefined && this.opts.networkMode !== NetMode.UNSET)
        d.state = d.state.network(this.opts.networkMode);
      try {
        if (d.image.config.WorkingDir)
          dispatchWorkdir(d, d.image.config.WorkingDir, false, opt, '');
        if (d.image.config.User) dispatchUser(d, d.image.config.User, false, opt);
      } catch (err) {
        throw withLocation(err, d.stage);
      }
      for (const cmd of d.commands) {
        try {
          this.shlex.budget?.checkTime();
          dispatch(d, cmd, opt);
        } catch (err) {
          throw withLocation(err, cmd.command);
        }
      }
      for (const p of d.ctxPaths) ctxPaths.add(p);
    }
    return ctxPaths;
  }

  private finalize(target: DispatchState, ctxPaths: Set<string>): void {
    const labels = this.opts.labels ?? {};
    if (Object.keys(labels).length > 0)
      target.image.config.Labels = { ...(target.image.config.Labels ?? {}), ...labels };
    let ctx = this.opts.mainContext;
    if (!ctx) {
      const name = this.opts.contextName ?? 'context';
      const followPaths = normalizeContextPaths(ctxPaths);
      ctx = local(name, {
        sharedKeyHint: name,
        customName: '[internal] load build context',
        ...(this.opts.sessionId ? { sessionId: this.opts.sessionId } : {}),
        ...(this.opts.dockerignore?.length ? { excludePatterns: [...this.opts.dockerignore] } : {}),
        ...(followPaths ? { followPaths } : {}),
      });
    }
    if (!ctx.output) throw noLine('the build context cannot be empty');
    this.contextVertex.set(ctx.output);
    if (!this.po.implicitTarget) {
      const tp = this.po.targetPlatform;
      const sameOsArch = tp.os === target.image.os && tp.architecture === target.image.architecture;
      target.image.os = tp.os;
      target.image.architecture = tp.architecture;
      if (tp.variant || !sameOsArch) {
        if (tp.variant) target.image.variant = tp.variant;
        else delete target.image.variant;
      }
      if (tp.osVersion || !sameOsArch) {
        if (tp.osVersion) target.image['os.version'] = tp.osVersion;
        else delete target.image['os.version'];
      }
      if (tp.osFeatures) target.image['os.features'] = [...tp.osFeatures];
    }
  }
}

/** SOURCE_DATE_EPOCH: Unix seconds; history times and file timestamps use it. */
function parseSourceDateEpoch(v: string): Date {
  if (!/^[0-9]+$/.test(v)) throw noLine(`invalid SOURCE_DATE_EPOCH: ${v}`);
  return new Date(Number(v) * 1000);
}

/** The context paths as followPaths: relative, sorted; none when the whole context is read. */
function normalizeContextPaths(paths: Set<string>): string[] | undefined {
  if (paths.size === 0 || paths.has('/')) return undefined;
  return [...paths].map((p) => posix.normalize(posix.join('.', p))).sort();
}

// ---- dispatch ----

function expandWord(d: DispatchState, opt: DispatchOpt, word: string): string {
  return opt.shlex.processWord(word, getEnv(d.state));
}

function expandRaw(d: DispatchState, word: string, budget: ExpansionBudget | undefined): string {
  const lex = new ShellLex('\\', { skipProcessQuotes: true, ...(budget ? { budget } : {}) });
  return lex.processWord(word, getEnv(d.state));
}

/** Expands a command's words against the stage environment (BuildKit's Expand methods). */
function expandCommand(d: DispatchState, c: Command, opt: DispatchOpt): Command {
  const ex = (w: string): string => expandWord(d, opt, w);
  switch (c.kind) {
    case 'env':
      return { ...c, env: c.env.map((kv) => ({ key: ex(kv.key), value: ex(kv.value) })) };
    case 'label':
      return { ...c, labels: c.labels.map((kv) => ({ key: ex(kv.key), value: ex(kv.value) })) };
    case 'add':
    case 'copy': {
      const out = {
        ...c,
        chown: ex(c.chown),
        chmod: ex(c.chmod),
        sourcePaths: c.sourcePaths.map(ex),
        destPath: ex(c.destPath),
        excludePatterns: c.excludePatterns.map(ex),
        sourceContents: c.sourceContents.map((sc) =>
          sc.expand ? { ...sc, data: expandRaw(d, sc.data, opt.shlex.budget) } : sc,
        ),
      };
      if (out.kind === 'add') out.checksum = ex(out.checksum);
      return out;
    }
    case 'workdir':
      return { ...c, path: ex(c.path) };
    case 'user':
      return { ...c, user: ex(c.user) };
    case 'volume':
      return { ...c, volumes: c.volumes.map(ex) };
    case 'stopsignal':
      return { ...c, signal: ex(c.signal) };
    case 'run':
      return { ...c, mounts: c.mountSpecs.map((s) => parseMount(s, ex)) };
    default:
      return c;
  }
}

function dispatch(d: DispatchState, dc: DispatchCommand, opt: DispatchOpt): void {
  d.cmdIsOnBuild = dc.isOnBuild;
  const c = dc.command.kind === 'arg' ? dc.command : expandCommand(d, dc.command, opt);
  switch (c.kind) {
    case 'maintainer':
      d.image.author = c.maintainer;
      commitToHistory(d.image, `MAINTAINER ${c.maintainer}`, false, false, goTime(opt.epoch));
      return;
    case 'env': {
      let msg = 'ENV';
      for (const e of c.env) {
        msg += ' ' + kvString(e);
        d.state = d.state.addEnv(e.key, e.value);
        d.image.config.Env = addEnv(d.image.config.Env, e.key, e.value);
      }
      commitToHistory(d.image, msg, false, false, goTime(opt.epoch));
      return;
    }
    case 'run':
      dispatchRun(d, c, dc.sources, opt);
      return;
    case 'workdir':
      dispatchWorkdir(d, c.path, true, opt, c.code, c);
      return;
    case 'add':
      dispatchCopy(d, {
        params: c,
        excludePatterns: c.excludePatterns,
        source: opt.buildContext,
        isAddCommand: true,
        code: c.code,
        chown: c.chown,
        chmod: c.chmod,
        link: c.link,
        keepGitDir: c.keepGitDir,
        checksum: c.checksum,
        parents: false,
        unpack: c.unpack,
        location: c,
        opt,
      });
      for (const src of c.sourcePaths) {
        if (!src.startsWith('http://') && !src.startsWith('https://'))
          d.ctxPaths.add(joinRoot(src));
      }
      return;
    case 'copy': {
      let source = opt.buildContext;
      const from = dc.sources[0];
      if (from) {
        if (!from.dispatched) {
          throw new Error(
            `cannot copy from stage ${JSON.stringify(c.from)}, it needs to be defined before current stage ${JSON.stringify(d.stageName)}`,
          );
        }
        source = from.state;
      }
      dispatchCopy(d, {
        params: c,
        excludePatterns: c.excludePatterns,
        source,
        isAddCommand: false,
        code: c.code,
        chown: c.chown,
        chmod: c.chmod,
        link: c.link,
        keepGitDir: undefined,
        checksum: '',
        parents: c.parents,
        unpack: undefined,
        location: c,
        opt,
      });
      const paths = from ? from.paths : d.ctxPaths;
      for (const src of c.sourcePaths) paths.add(joinRoot(src));
      return;
    }
    case 'label': {
      let msg = 'LABEL';
      const labels = { ...(d.image.config.Labels ?? {}) };
      for (const v of c.labels) {
        labels[v.key] = v.value;
        msg += ' ' + kvString(v);
      }
      d.image.config.Labels = labels;
      commitToHistory(d.image, msg, false, false, goTime(opt.epoch));
      return;
    }
    case 'onbuild':
      d.image.config.OnBuild = [...(d.image.config.OnBuild ?? []), c.expression];
      return;
    case 'cmd': {
      d.cmdSet = true;
      const args = c.prependShell ? withShell(d.image, c.cmdLine) : c.cmdLine;
      d.image.config.Cmd = args;
      d.image.config.ArgsEscaped = true;
      commitToHistory(d.image, `CMD ${goQuoteSliceQ(args)}`, false, false, goTime(opt.epoch));
      return;
    }
    case 'entrypoint': {
      const args = c.prependShell ? withShell(d.image, c.cmdLine) : c.cmdLine;
      d.image.config.Entrypoint = args;
      if (!d.cmdSet) delete d.image.config.Cmd;
      commitToHistory(
        d.image,
        `ENTRYPOINT ${goQuoteSliceQ(args)}`,
        false,
        false,
        goTime(opt.epoch),
      );
      return;
    }
    case 'healthcheck': {
      const h = c.health;
      d.image.config.Healthcheck = {
        Test: h.test,
        Interval: h.interval,
        Timeout: h.timeout,
        StartPeriod: h.startPeriod,
        StartInterval: h.startInterval,
        Retries: h.retries,
      };
      commitToHistory(
        d.image,
        `HEALTHCHECK ${healthcheckHistory(d.image.config.Healthcheck)}`,
        false,
        false,
        goTime(opt.epoch),
      );
      return;
    }
    case 'expose': {
      const env = getEnv(d.state);
      const ports: string[] = [];
      for (const p of c.ports) ports.push(...opt.shlex.processWords(p, env));
      const ps = parsePortSpecs(ports);
      const exposed = { ...(d.image.config.ExposedPorts ?? {}) };
      for (const p of ps) exposed[p] = {};
      d.image.config.ExposedPorts = exposed;
      commitToHistory(d.image, `EXPOSE ${formatPortMap(ps)}`, false, false, goTime(opt.epoch));
      return;
    }
    case 'user':
      dispatchUser(d, c.user, true, opt);
      return;
    case 'volume': {
      const vols = { ...(d.image.config.Volumes ?? {}) };
      for (const v of c.volumes) {
        if (v === '') throw new Error('VOLUME specified can not be an empty string');
        vols[v] = {};
      }
      d.image.config.Volumes = vols;
      commitToHistory(d.image, `VOLUME ${goSliceV(c.volumes)}`, false, false, goTime(opt.epoch));
      return;
    }
    case 'stopsignal':
      validateSignal(c.signal);
      d.image.config.StopSignal = c.signal;
      commitToHistory(d.image, `STOPSIGNAL ${c.signal}`, false, false, goTime(opt.epoch));
      return;
    case 'shell':
      d.image.config.Shell = c.shell;
      commitToHistory(d.image, `SHELL ${goSliceV(c.shell)}`, false, false, goTime(opt.epoch));
      return;
    case 'arg':
      dispatchArg(d, c.args, opt);
      return;
  }
}

function withShell(img: ImageConfig, args: readonly string[]): string[] {
  const shell = img.config.Shell?.length ? [...img.config.Shell] : defaultShell(img.os);
  return [...shell, args.join(' ')];
}

function summarizeHeredoc(doc: string): string {
  const lines = doc.trim().replace(/\r\n/g, '\n').split('\n');
  return lines[0]! + (lines.length > 1 ? '...' : '');
}

/** The history text of a RUN: build args in use first (`|2 A=1 B=2 /bin/sh -c ...`). */
function runCommandString(
  args: readonly string[],
  buildArgs: readonly KeyValuePairOptional[],
  env: EnvGetter,
): string {
  const tmp: string[] = [];
  const idx = new Map<string, number>();
  for (const arg of buildArgs) {
    const v = env.get(arg.key) ?? arg.value ?? '';
    const i = idx.get(arg.key);
    if (i !== undefined) tmp[i] = `${arg.key}=${v}`;
    else {
      idx.set(arg.key, tmp.length);
      tmp.push(`${arg.key}=${v}`);
    }
  }
  const prefix = tmp.length > 0 ? [`|${tmp.length}`, ...tmp] : [];
  return [...prefix, ...args].join(' ');
}

function dispatchRun(
  d: DispatchState,
  c: RunCommand,
  sources: readonly (DispatchState | undefined)[],
  opt: DispatchOpt,
): void {
  let customName = c.code;
  // A RUN may read anything in the stage.
  d.paths.add('/');
  let args = c.cmdLine;
  const extraMounts: MountSpec[] = [];
  if (c.files.length > 0) {
    if (args.length !== 1 || !c.prependShell)
      throw new Error(`parsing produced an invalid run command: ${goSliceV(args)}`);
    let heredoc;
    try {
      heredoc = parseHeredoc(args[0]!);
    } catch {
      // Not a lone heredoc word: handled as a shell script below.
      heredoc = undefined;
    }
    if (heredoc) {
      const file = c.files[0]!;
      let data = file.data;
      if (file.chomp) data = chompHeredocContent(data);
      if (d.image.os !== 'windows' && data.startsWith('#!')) {
        // A script with a shebang: written to a file, mounted, and run.
        const destPath = '/dev/pipes/';
        const st = scratch()
          .dir('/')
          .file(mkfile(file.name, 0o755, data), {
            customName: '[internal] preparing inline document',
            platform: d.platform!,
          });
        extraMounts.push({ target: destPath, source: st, selector: '/', readonly: true });
        args = [posix.join(destPath, file.name)];
      } else {
        // A plain heredoc: its body is the shell script.
        args = [data];
      }
      customName += ` (${summarizeHeredoc(file.data)})`;
    } else {
      let b = args[0]!;
      for (const f of c.files) b += '\n' + f.data + f.name;
      args = [b];
    }
  }
  if (c.prependShell) args = withShell(d.image, args);
  // BuildKit fails later, when the exec is marshaled; here it is the instruction's error.
  if (args.length === 0) throw new Error('RUN requires at least one argument');

  const mounts = c.mounts;
  const rm = dispatchRunMounts(d, mounts, sources, opt);
  const env = getEnv(d.state);
  const nameLex = new ShellLex(opt.shlex.escapeToken, {
    rawQuotes: true,
    skipUnsetEnv: true,
    ...(opt.shlex.budget ? { budget: opt.shlex.budget } : {}),
  });
  const name = prefixCommand(
    d,
    uppercaseCmd(processCmdEnv(nameLex, customName, withSecretEnvMask(mounts, env))),
    d.prefixPlatform,
    d.state.getPlatform() ?? d.platform,
    env,
  );
  const network =
    c.network === 'none' ? NetMode.NONE : c.network === 'host' ? NetMode.HOST : undefined;
  const security =
    c.security === 'insecure'
      ? SecurityMode.INSECURE
      : c.security === 'sandbox'
        ? SecurityMode.SANDBOX
        : undefined;
  // Each RUN carries the whole environment: bound what the Definition will hold before it is
  // marshaled (an ARG near maxWordLength in ten thousand RUNs is gigabytes).
  if (opt.shlex.budget) {
    let n = name.length;
    for (const a of args) n += a.length;
    for (const k of env.keys()) n += k.length + (env.get(k)?.length ?? 0);
    opt.shlex.budget.chargeDefinition(n);
  }
  const exec = d.state.run({
    args,
    description: dfCmd(c.code),
    customName: name,
    ...(d.ignoreCache ? { ignoreCache: true } : {}),
    ...(opt.proxyEnv ? { proxyEnv: opt.proxyEnv } : {}),
    ...(network !== undefined ? { network } : {}),
    ...(security !== undefined ? { security } : {}),
    ...(opt.extraHosts.length ? { extraHosts: [...opt.extraHosts] } : {}),
    ...(opt.ulimits.length ? { ulimits: [...opt.ulimits] } : {}),
    mounts: [
      ...extraMounts,
      ...rm.mounts,
      // --shm-size: BuildKit's /dev/shm tmpfs, after the RUN's own mounts.
      ...(opt.shmSize > 0
        ? [{ target: '/dev/shm', source: scratch(), tmpfs: { size: opt.shmSize } }]
        : []),
    ],
    secrets: rm.secrets,
    ssh: rm.ssh,
  });
  d.state = opt.locate(exec.root(), c);
  commitToHistory(
    d.image,
    'RUN ' + runCommandString(args, d.buildArgs, env),
    true,
    true,
    goTime(opt.epoch),
  );
}

/** Docker's WORKDIR normalization: relative paths join the current directory. */
function normalizeWorkdir(current: string, wd: string): string {
  if (wd === '') throw new Error('cannot normalize empty path');
  return posix.isAbsolute(wd)
    ? posix.normalize(wd).replace(/(.)\/$/, '$1')
    : posix.join('/', current, wd).replace(/(.)\/$/, '$1');
}

function dispatchWorkdir(
  d: DispatchState,
  path: string,
  commit: boolean,
  opt: DispatchOpt,
  code: string,
  loc?: Location,
): void {
  let wd: string;
  try {
    wd = normalizeWorkdir(d.image.config.WorkingDir ?? '', path);
  } catch (err) {
    throw new Error(`normalizing workdir: ${(err as Error).message}`, { cause: err });
  }
  d.image.config.WorkingDir = wd;
  d.state = d.state.dir(wd);
  if (!commit) return;
  let withLayer = false;
  if (wd !== '/') {
    const user = d.image.config.User;
    const env = getEnv(d.state);
    d.state = d.state.file(
      mkdir(wd, 0o755, {
        makeParents: true,
        ...(user ? { chown: user } : {}),
        ...(opt.epoch ? { createdTime: opt.epoch } : {}),
      }),
      {
        customName: prefixCommand(
          d,
          uppercaseCmd(processCmdEnv(opt.shlex, code, env)),
          d.prefixPlatform,
          d.platform ?? opt.targetPlatform,
          env,
        ),
        platform: d.platform ?? opt.targetPlatform,
      },
    );
    if (loc) d.state = opt.locate(d.state, loc);
    withLayer = true;
  }
  commitToHistory(d.image, 'WORKDIR ' + wd, withLayer, false, goTime(opt.epoch));
}

function dispatchUser(d: DispatchState, user: string, commit: boolean, opt: DispatchOpt): void {
  d.state = d.state.user(user);
  d.image.config.User = user;
  if (commit) commitToHistory(d.image, `USER ${user}`, false, false, goTime(opt.epoch));
}

function dispatchArg(
  d: DispatchState,
  args: readonly KeyValuePairOptional[],
  opt: DispatchOpt,
): void {
  const commitStrs: string[] = [];
  for (const orig of args) {
    const arg = { ...orig };
    const hasValue = Object.hasOwn(opt.buildArgValues, arg.key);
    const hasDefault = arg.value !== undefined;
    if (!hasDefault && !hasValue) {
      const v = opt.globalArgs.get(arg.key);
      if (v !== undefined) arg.value = v;
    }
    const expanded = hasDefault ? opt.shlex.processWord(orig.value!, getEnv(d.state)) : undefined;
    if (hasValue) arg.value = opt.buildArgValues[arg.key];
    else if (hasDefault) arg.value = expanded;
    if (arg.value !== undefined) d.state = d.state.addEnv(arg.key, arg.value);
    d.buildArgs.push(arg);
    // As BuildKit v0.11.6 (test/src/e2e/source-date-epoch.test.ts): the history shows the ARG's
    // own default, expanded (`ARG D=x1`), never the value a build argument or a global ARG gave
    // it (`ARG V`).
    commitStrs.push(expanded !== undefined ? `${arg.key}=${expanded}` : arg.key);
  }
  commitToHistory(d.image, 'ARG ' + commitStrs.join(' '), false, false, goTime(opt.epoch));
}

// ---- entry points ----

/** A Dockerfile already parsed into instructions (conversion does not modify them). */
export interface ParsedDockerfile {
  text: string;
  escapeToken: string;
  instructions: ParsedInstructions;
}

/**
 * Parses a Dockerfile down to instructions; DockerfileError for what BuildKit rejects, and
 * DockerfileLimitError for a Dockerfile beyond the size, instruction or stage bounds.
 */
export function parseDockerfile(
  source: string | Uint8Array,
  limits: Partial<FrontendLimits> = {},
): ParsedDockerfile {
  const lim = frontendLimits(limits);
  const size = typeof source === 'string' ? Buffer.byteLength(source) : source.length;
  if (size > lim.maxDockerfileBytes) {
    throw new DockerfileLimitError(
      `the Dockerfile is ${size} bytes, more than ${lim.maxDockerfileBytes} (the frontend's maxDockerfileBytes)`,
      { limit: 'maxDockerfileBytes', max: lim.maxDockerfileBytes },
    );
  }
  const text = typeof source === 'string' ? source : Buffer.from(source).toString('utf8');
  if (text.length === 0) throw noLine('the Dockerfile cannot be empty');
  const { ast, escapeToken } = parse(text);
  const over = ast.children[lim.maxInstructions];
  if (over) throw tooMany('instructions', 'maxInstructions', lim.maxInstructions, over);
  const instructions = parseInstructions(ast);
  const stage = instructions.stages[lim.maxStages];
  if (stage) throw tooMany('stages', 'maxStages', lim.maxStages, stage);
  return { text, escapeToken, instructions };
}

/** More instructions or stages than a bound allows, at the first one past it. */
function tooMany(
  what: string,
  limit: 'maxInstructions' | 'maxStages',
  max: number,
  at: { startLine: number; endLine: number },
): DockerfileLimitError {
  return new DockerfileLimitError(
    `the Dockerfile has more than ${max} ${what} (the frontend's ${limit})`,
    { limit, max, startLine: at.startLine, endLine: at.endLine },
  );
}

function newConverter(
  source: string | Uint8Array | ParsedDockerfile,
  opts: ConvertOptions,
): Converter {
  const parsed =
    typeof source === 'string' || source instanceof Uint8Array
      ? parseDockerfile(source, opts.limits)
      : source;
  const { stages, metaArgs } = parsed.instructions;
  if (stages.length === 0) throw noLine('dockerfile contains no stages to build');
  return new Converter(
    parsed.text,
    stages,
    metaArgs,
    parsed.escapeToken,
    opts,
    opts.targetPlatform,
  );
}

/**
 * Converts a Dockerfile for one target platform (`opts.targetPlatform`, or the build platform).
 * Throws DockerfileError (with the line range when there is one) for anything a user must fix.
 */
export async function convertDockerfile(
  source: string | Uint8Array | ParsedDockerfile,
  opts: ConvertOptions = {},
): Promise<ConvertResult> {
  return newConverter(source, opts).run(opts.metaResolver);
}

/** convertDockerfile with a synchronous resolver (or none): no promise, same result. */
export function convertDockerfileSync(
  source: string | Uint8Array | ParsedDockerfile,
  opts: Omit<ConvertOptions, 'metaResolver'> & { metaResolver?: SyncMetaResolver } = {},
): ConvertResult {
  const { metaResolver, ...rest } = opts;
  return newConverter(source, rest).runSync(metaResolver);
}

/** Converts a Dockerfile for every target platform (`targetPlatforms`, or the single default). */
export async function dockerfileToLLB(
  source: string | Uint8Array,
  opts: ConvertOptions = {},
): Promise<ConvertResult[]> {
  const platforms = opts.targetPlatforms?.length ? opts.targetPlatforms : [opts.targetPlatform];
  const out: ConvertResult[] = [];
  for (const p of platforms) {
    out.push(
      await convertDockerfile(
        source,
        p ? { ...opts, targetPlatform: p } : { ...opts, targetPlatform: undefined },
      ),
    );
  }
  return out;
}

/** Options of marshalResult: marshal options, and the source map's file name. */
export interface MarshalResultOptions extends MarshalOptions {
  /** Attach the source map (op -> Dockerfile lines) under this file name; none when undefined. */
  sourceMapFilename?: string;
}

/**
 * Marshals a result with its platform as the default (BuildKit's SetMarshalDefaults); with
 * `sourceMapFilename`, the Definition carries the Dockerfile and each op's lines.
 */
export function marshalResult(result: ConvertResult, opts: MarshalResultOptions = {}): Definition {
  const { sourceMapFilename, ...mopts } = opts;
  result.sourceLocations.reset();
  const def = marshal(result.state, { platform: result.platform, ...mopts });
  const out =
    sourceMapFilename === undefined
      ? def
      : result.sourceLocations.attach(def, sourceMapFilename, result.source);
  const limits = result.limits ?? DEFAULT_FRONTEND_LIMITS;
  const size = out.toBytes().length;
  if (size > limits.maxDefinitionBytes) throw definitionTooLarge(limits, size);
  return out;
}

export type { Mount };

/**
 * The stages with each one after the stage it is based on (`FROM a AS b` / `FROM b AS c`): a
 * stage's init copies its base's image, so the base must be initialised first.
 */
function baseFirst(stages: ReadonlySet<DispatchState>): DispatchState[] {
  const out: DispatchState[] = [];
  const seen = new Set<DispatchState>();
  const visit = (d: DispatchState): void => {
    if (seen.has(d)) return;
    seen.add(d);
    if (d.base && stages.has(d.base)) visit(d.base);
    out.push(d);
  };
  for (const d of stages) visit(d);
  return out;
}
