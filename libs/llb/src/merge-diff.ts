import type { pb } from '@kiln/protocol';
import { Caps, EMPTY_INPUT, LLB_DEFINITION_INPUT, Attrs } from './constants.js';
import { State, scratch } from './state.js';
import { Output, addCaps, constraintsFrom, finishOp, marshalConstraints } from './vertex.js';
import type {
  Constraints,
  ConstraintsOptions,
  MarshaledVertex,
  Vertex,
  MarshalContext,
} from './vertex.js';

/** MergeOp: the layers of several states stacked in order, later ones on top. */
export class MergeOp implements Vertex {
  readonly output: Output;

  constructor(
    private readonly sources: readonly Output[],
    private readonly constraints: Constraints,
  ) {
    this.output = new Output(this, 0);
  }

  inputs(): readonly Output[] {
    return this.sources;
  }

  marshal(ctx: MarshalContext): MarshaledVertex {
    const { op, metadata } = marshalConstraints(
      ctx.constraints,
      addCaps(this.constraints, Caps.mergeOp),
    );
    const inputs = this.sources.map((s) => s.toInput(ctx));
    const merge: pb.IMergeOp = { inputs: inputs.map((_, i) => (i === 0 ? {} : { input: i })) };
    return finishOp({ inputs, merge, constraints: op.constraints! }, metadata);
  }
}

/** Merges states: scratch inputs are dropped; one input is returned as is. */
export function merge(states: readonly State[], opts?: ConstraintsOptions): State {
  const outs = states.filter((s) => s.output !== undefined);
  if (outs.length === 0) return scratch();
  if (outs.length === 1) return outs[0]!;
  const op = new MergeOp(
    outs.map((s) => s.output!),
    constraintsFrom(opts),
  );
  return State.of(op.output);
}

/** DiffOp: the changes that turn `lower` into `upper`, as a filesystem of their own. */
export class DiffOp implements Vertex {
  readonly output: Output;

  constructor(
    private readonly lower: Output | undefined,
    private readonly upper: Output | undefined,
    private readonly constraints: Constraints,
  ) {
    this.output = new Output(this, 0);
  }

  inputs(): readonly Output[] {
    return [this.lower, this.upper].filter((o): o is Output => o !== undefined);
  }

  marshal(ctx: MarshalContext): MarshaledVertex {
    const { op, metadata } = marshalConstraints(
      ctx.constraints,
      addCaps(this.constraints, Caps.diffOp),
    );
    const inputs: pb.IInput[] = [];
    const ref = (o: Output | undefined): { input?: number } => {
      if (!o) return { input: EMPTY_INPUT };
      inputs.push(o.toInput(ctx));
      const i = inputs.length - 1;
      return i === 0 ? {} : { input: i };
    };
    const diff: pb.IDiffOp = { lower: ref(this.lower), upper: ref(this.upper) };
    const full: pb.IOp = {};
    if (inputs.length) full.inputs = inputs;
    full.diff = diff;
    full.constraints = op.constraints!;
    return finishOp(full, metadata);
  }
}

/** The difference between two states; a scratch lower gives `upper` itself. */
export function diff(lower: State, upper: State, opts?: ConstraintsOptions): State {
  if (lower.output === undefined && upper.output !== undefined) return upper;
  if (lower.output !== undefined && lower.output === upper.output) return scratch();
  const op = new DiffOp(lower.output, upper.output, constraintsFrom(opts));
  return State.of(op.output);
}

/** BuildOp: build the LLB definition file found in `source` (nested build, experimental). */
export class BuildOp implements Vertex {
  readonly output: Output;

  constructor(
    private readonly source: Output,
    private readonly filename: string,
    private readonly constraints: Constraints,
  ) {
    this.output = new Output(this, 0);
  }

  inputs(): readonly Output[] {
    return [this.source];
  }

  marshal(ctx: MarshalContext): MarshaledVertex {
    const c = addCaps(this.constraints, Caps.buildOpLLBFileName);
    const { op, metadata } = marshalConstraints(ctx.constraints, c);
    const build: pb.IBuildOp = { builder: EMPTY_INPUT, inputs: { [LLB_DEFINITION_INPUT]: {} } };
    if (this.filename) build.attrs = { [Attrs.llbDefinitionFilename]: this.filename };
    return finishOp(
      {
        inputs: [this.source.toInput(ctx)],
        build,
        platform: op.platform!,
        constraints: op.constraints!,
      },
      metadata,
    );
  }
}

/** A nested build of the definition file `filename` in `source`. */
export function build(source: State, filename = '', opts?: ConstraintsOptions): State {
  if (!source.output) throw new TypeError('build: source must not be scratch');
  return State.of(new BuildOp(source.output, filename, constraintsFrom(opts)).output);
}
