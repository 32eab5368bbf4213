// chainAfter's rules on Definitions made with the LLB builder (pure: no farm).
import {
  LinuxAmd64,
  LinuxArm64,
  copy,
  image,
  marshal,
  mkdir,
  mkfile,
  parseDefinition,
} from '@kiln/llb';
import type { LoadedDefinition, LoadedOp, State } from '@kiln/llb';
import { formatPlatform, platformFromPb } from '@kiln/protocol';
import { describe, expect, it } from 'vitest';
import { MAX_CHAIN_BYTES, MAX_CHAIN_STEPS, chainAfter, consumersOf } from './chain.js';
import type { ChainState } from './chain.js';

const load = (st: State): LoadedDefinition =>
  parseDefinition(marshal(st, { platform: LinuxAmd64 }).toProto());

/** Every vertex waits, none is done but the sources (as when a build starts). */
function state(
  g: LoadedDefinition,
  o: { done?: string[]; ignoreCache?: boolean } = {},
): ChainState {
  const done = new Set([
    ...[...g.ops.values()].filter((lo) => lo.op.source).map((lo) => lo.digest),
    ...(o.done ?? []),
  ]);
  return {
    consumers: consumersOf(g),
    done: (d) => done.has(d),
    waiting: (d) => !done.has(d),
    platform: (lo) => formatPlatform(platformFromPb(lo.op.platform) ?? LinuxAmd64),
    ignoresCache: () => o.ignoreCache ?? false,
  };
}

const fileOps = (g: LoadedDefinition): LoadedOp[] =>
  g.order.map((d) => g.ops.get(d)!).filter((lo) => lo.op.file);
const digests = (links: { lo: LoadedOp }[]): string[] => links.map((l) => l.lo.digest);

describe('chainAfter', () => {
  const base = image('example.com/base:1');

  it('follows a line of file ops, each on the one before, up to a RUN, which ends it', () => {
    const st = base
      .file(mkdir('/a', 0o755))
      .file(mkfile('/a/x', 0o644, 'x'))
      .run({ args: ['/bin/true'] })
      .root()
      .file(mkfile('/y', 0o644, 'y'));
    const g = load(st);
    const [head, x, run] = g.order.slice(1).map((d) => g.ops.get(d)!);
    expect(digests(chainAfter(g, head!, state(g)))).toEqual([x!.digest, run!.digest]);
    // A RUN's task has no chain: what follows it waits for its record.
    expect(chainAfter(g, run!, state(g))).toEqual([]);
    expect(digests(chainAfter(g, x!, state(g)))).toEqual([run!.digest]);
  });

  it('stops before a step whose other input is not done, and at a vertex with two consumers', () => {
    const other = base.file(mkfile('/o', 0o644, 'o'));
    const a = base.file(mkdir('/a', 0o755));
    const b = a.file(copy(other, '/o', '/a/o'));
    const g = load(b);
    const [dOther, dA, dB] = [other, a, b].map((x) => load(x).result.digest);
    const head = g.ops.get(dA!)!;
    // `other` is not done: b waits for it, so it cannot go with a.
    expect(chainAfter(g, head, state(g))).toEqual([]);
    expect(digests(chainAfter(g, head, state(g, { done: [dOther!] })))).toEqual([dB]);
    // The image has two consumers (a and other): nothing goes with it, even with --no-cache.
    const src = g.ops.get(g.order[0]!)!;
    expect(chainAfter(g, src, state(g, { ignoreCache: true }))).toEqual([]);
  });

  it('never chains a COPY whose source (keyed by content) is the previous step', () => {
    const a = base.file(mkdir('/a', 0o755));
    const b = image('example.com/other:1').file(copy(a, '/a', '/from-a'));
    const g = load(b);
    expect(chainAfter(g, g.ops.get(load(a).result.digest)!, state(g))).toEqual([]);
  });

  it('never after a source that keeps the cache; after one that ignores it, yes', () => {
    const g = load(base.file(mkdir('/a', 0o755)));
    const src = g.ops.get(g.order[0]!)!;
    expect(chainAfter(g, src, state(g))).toEqual([]);
    expect(digests(chainAfter(g, src, state(g, { ignoreCache: true })))).toEqual([g.result.digest]);
  });

  it('stops before its ops pass MAX_CHAIN_BYTES', () => {
    const big = 'x'.repeat(MAX_CHAIN_BYTES / 2 - 1024);
    let st = base.file(mkdir('/a', 0o755));
    for (let i = 0; i < 4; i++) st = st.file(mkfile(`/a/${i}`, 0o644, big));
    const g = load(st);
    expect(chainAfter(g, fileOps(g)[0]!, state(g))).toHaveLength(2);
  });

  it('stops at another platform and after MAX_CHAIN_STEPS steps', () => {
    let st = base.file(mkdir('/a', 0o755));
    for (let i = 0; i < MAX_CHAIN_STEPS + 5; i++) st = st.file(mkfile(`/a/${i}`, 0o644, `${i}`));
    const g = load(st);
    const ops = fileOps(g);
    expect(chainAfter(g, ops[0]!, state(g))).toHaveLength(MAX_CHAIN_STEPS);

    const arm = base
      .file(mkdir('/a', 0o755))
      .file(mkfile('/a/x', 0o644, 'x'), { platform: LinuxArm64 });
    const g2 = load(arm);
    expect(chainAfter(g2, fileOps(g2)[0]!, state(g2))).toEqual([]);
  });
});
