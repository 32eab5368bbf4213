/**
 * Source locations of vertices (BuildKit's llb.SourceMap): which Dockerfile lines each op comes
 * from, so that a failing vertex can be reported at its instruction. The converter wraps the
 * outputs of the ops it makes for an instruction in a LocatedVertex; marshaling through the
 * wrapper is the real op's marshal (same bytes, same digest) and notes the digest.
 */
import { Definition, Output } from '@kiln/llb';
import type { State, Vertex } from '@kiln/llb';
import type { pb } from '@kiln/protocol';
import type { Location } from '../instructions/commands.js';

type MarshalCtx = Parameters<Vertex['marshal']>[0];

export class LocatedVertex implements Vertex {
  /** The digest seen by the latest marshal (marshal is synchronous: read it right after). */
  lastDigest: string | undefined;

  constructor(
    private readonly real: Vertex,
    readonly location: Location,
  ) {}

  inputs(): readonly Output[] {
    return this.real.inputs();
  }

  marshal(ctx: MarshalCtx): ReturnType<Vertex['marshal']> {
    const m = ctx.get(this.real);
    this.lastDigest = m.digest;
    return m;
  }
}

/** Collects the located vertices of one conversion. */
export class SourceLocations {
  readonly vertices: LocatedVertex[] = [];

  /** `state` with its output noted as coming from `loc`. */
  locate(state: State, loc: Location): State {
    const out = state.output;
    if (!out) return state;
    const v = new LocatedVertex(out.vertex, loc);
    this.vertices.push(v);
    return state.withOutput(new Output(v, () => out.index()));
  }

  /** Resets what the previous marshal noted. */
  reset(): void {
    for (const v of this.vertices) v.lastDigest = undefined;
  }

  /**
   * The definition with its source map: the Dockerfile as source 0, and for every op made for an
   * instruction, that instruction's line range (lines 1-based, as BuildKit's pb.Range).
   */
  attach(def: Definition, filename: string, data: string | Uint8Array): Definition {
    const locations: Record<string, pb.ILocations> = { ...(def.source?.locations ?? {}) };
    const seen = new Set(def.digests());
    for (const v of this.vertices) {
      const d = v.lastDigest;
      if (d === undefined || !seen.has(d)) continue;
      const range: pb.IRange = {
        start: { line: v.location.startLine },
        end: { line: Math.max(v.location.endLine, v.location.startLine) },
      };
      const prev = locations[d]?.locations ?? [];
      const dup = prev.some((l) =>
        l.ranges?.some(
          (r) => r.start?.line === range.start!.line && r.end?.line === range.end!.line,
        ),
      );
      if (!dup) locations[d] = { locations: [...prev, { ranges: [range] }] };
    }
    const info: pb.ISourceInfo = {
      filename,
      data: typeof data === 'string' ? Buffer.from(data, 'utf8') : data,
      language: 'Dockerfile',
    };
    return new Definition(def.def, def.metadata, { locations, infos: [info] });
  }
}
