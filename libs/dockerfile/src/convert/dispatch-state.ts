/**
 * The per-stage state of a conversion (BuildKit's dispatchState) and the list of stages
 * (dispatchStates). Internal to the converter.
 */
import type { Platform, State } from '@kiln/llb';
import type { Command, KeyValuePairOptional, Stage } from '../instructions/commands.js';
import { cloneImage } from './image-config.js';
import type { ImageConfig } from './image-config.js';
import type { NamedContext } from './named-context.js';

/** A command and the stages (or images) it reads from (COPY --from, RUN --mount from=). */
export interface DispatchCommand {
  command: Command;
  /** One entry per source; for RUN, one per mount (undefined where the mount has no `from`). */
  sources: (DispatchState | undefined)[];
  isOnBuild: boolean;
}

export class DispatchState {
  state!: State;
  image!: ImageConfig;
  baseImg: ImageConfig | undefined;
  platform: Platform | undefined;
  base: DispatchState | undefined;
  dispatched = false;
  resolved = false;
  onBuildInit = false;
  /** The stages this one reads from, with the command that reads them. */
  readonly deps = new Map<DispatchState, Command>();
  buildArgs: KeyValuePairOptional[] = [];
  commands: DispatchCommand[] = [];
  /** Context paths this stage reads (for the context source's followPaths). */
  readonly ctxPaths = new Set<string>();
  /** Paths of this stage that later stages read. */
  paths = new Set<string>();
  ignoreCache = false;
  stageName: string;
  cmdIndex = 0;
  cmdIsOnBuild = false;
  cmdTotal = 0;
  prefixPlatform = false;
  /** CMD was set in this stage (an ENTRYPOINT then keeps it). */
  cmdSet = false;
  /**
   * A named context (`--build-context`) stands for this stage: its base and its commands are
   * not used (BuildKit's noinit).
   */
  named: NamedContext | undefined;
  /** A named context standing for this stage's base image (its commands run on it). */
  baseContext: NamedContext | undefined;

  constructor(
    public stage: Stage,
    /** An image named by COPY --from or a mount's from=, not a stage of the Dockerfile. */
    readonly unregistered = false,
  ) {
    this.stageName = stage.name;
  }

  /** Inherits state, platform and config from the base stage (BuildKit's init). */
  init(): void {
    if (!this.base) return;
    this.state = this.base.state;
    this.platform = this.base.platform;
    this.image = cloneImage(this.base.image);
    // ONBUILD triggers do not carry over from a base stage.
    delete this.image.config.OnBuild;
    this.baseImg = this.base.baseImg ? cloneImage(this.base.baseImg) : undefined;
    this.paths = this.base.paths;
    this.buildArgs = [...this.buildArgs, ...this.base.buildArgs];
  }
}

export class DispatchStates {
  readonly states: DispatchState[] = [];
  private readonly byName = new Map<string, DispatchState>();

  names(): string[] {
    return this.states.filter((s) => s.stageName !== '').map((s) => s.stageName);
  }

  add(ds: DispatchState): void {
    this.states.push(ds);
    const base = ds.named ? undefined : this.byName.get(ds.stage.baseName);
    if (base) ds.base = base;
    if (ds.stage.name !== '') this.byName.set(ds.stage.name.toLowerCase(), ds);
  }

  findByName(name: string): DispatchState | undefined {
    return this.byName.get(name.toLowerCase());
  }

  findByIndex(index: number): DispatchState {
    if (index < 0 || index >= this.states.length) throw new Error(`invalid stage index ${index}`);
    return this.states[index]!;
  }

  last(): DispatchState {
    return this.states[this.states.length - 1]!;
  }
}

/** The stages `s` needs: its base and everything it copies or mounts from, transitively. */
export function allReachableStages(s: DispatchState): Set<DispatchState> {
  const out = new Set<DispatchState>();
  const stack = [s];
  while (stack.length > 0) {
    const d = stack.pop()!;
    if (out.has(d)) continue;
    out.add(d);
    if (d.base) stack.push(d.base);
    for (const dep of d.deps.keys()) stack.push(dep);
  }
  return out;
}
