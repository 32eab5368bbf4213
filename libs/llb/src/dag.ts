import { pb } from '@kiln/protocol';
import { Definition } from './definition.js';
import type { LoadedDefinition, LoadedOp, OpRef } from './definition.js';

/** Input digests of a vertex, unique, in input order. */
export function inputDigests(op: LoadedOp): string[] {
  return [...new Set((op.op.inputs ?? []).map((i) => i.digest!))];
}

/** For each vertex of the graph, the vertices that read it. */
export function dependents(g: LoadedDefinition): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const d of g.order) out.set(d, []);
  for (const d of g.order) for (const i of inputDigests(g.ops.get(d)!)) out.get(i)?.push(d);
  return out;
}

/** Every vertex `digest` depends on, itself included, in topological order (inputs first). */
export function ancestors(g: LoadedDefinition, digest: string): string[] {
  const want = new Set<string>([digest]);
  // g.order lists inputs first, so walking it backwards sees each vertex before its inputs.
  for (let i = g.order.length - 1; i >= 0; i--) {
    const d = g.order[i]!;
    if (want.has(d)) for (const inp of inputDigests(g.ops.get(d)!)) want.add(inp);
  }
  return g.order.filter((d) => want.has(d));
}

/** The subgraph that computes `ref`, as a LoadedDefinition of its own. */
export function subgraph(g: LoadedDefinition, ref: OpRef): LoadedDefinition {
  const order = ancestors(g, ref.digest);
  const ops = new Map(order.map((d) => [d, g.ops.get(d)!] as const));
  return { ops, result: ref, order };
}

/** Marshals a loaded graph (or subgraph) back into a Definition with a terminal for its result. */
export function toDefinition(g: LoadedDefinition): Definition {
  const def = g.order.map((d) => g.ops.get(d)!.bytes);
  const metadata = new Map<string, pb.IOpMetadata>();
  for (const d of g.order) {
    const m = g.ops.get(d)!.metadata;
    if (m) metadata.set(d, m);
  }
  const input: pb.IInput =
    g.result.index === 0
      ? { digest: g.result.digest }
      : { digest: g.result.digest, index: g.result.index };
  def.push(pb.Op.encode({ inputs: [input] }).finish());
  return new Definition(def, metadata);
}

/** Groups the graph into levels: each vertex's inputs are all in earlier levels. */
export function levels(g: LoadedDefinition): string[][] {
  const depth = new Map<string, number>();
  const out: string[][] = [];
  for (const d of g.order) {
    let lvl = 0;
    for (const i of inputDigests(g.ops.get(d)!)) lvl = Math.max(lvl, depth.get(i)! + 1);
    depth.set(d, lvl);
    (out[lvl] ??= []).push(d);
  }
  return out;
}
