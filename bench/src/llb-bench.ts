/**
 * LLB marshal + digest and parse + validate of 10,000-vertex graphs (issue: foundation).
 * Baseline, measured in the same run: the bare protobuf work on the same ops (encode + sha256 of
 * every op; decode + sha256), the floor any implementation pays. Target: each case < 300 ms.
 */
import { createHash } from 'node:crypto';
import { pb } from '@kiln/protocol';
import { LinuxAmd64, image, marshal, merge, mkfile, parseDefinition, scratch } from '@kiln/llb';
import type { State } from '@kiln/llb';
import { median, printTable, timeRuns } from './table.js';

const N = 10_000;

function chain(n: number): State {
  let st = image('busybox');
  for (let i = 0; i < n - 1; i++) {
    st =
      i % 2 === 0
        ? st.file(mkfile(`/f${i}`, 0o644, `${i}`))
        : st.run({ args: ['sh', '-c', `echo ${i}`] }).root();
  }
  return st;
}

function wide(n: number): State {
  const leaves: State[] = [];
  for (let i = 0; i < n - 1; i++) leaves.push(scratch().file(mkfile(`/f${i}`, 0o644, `${i}`)));
  return merge(leaves);
}

export function runLlbBench(runs = 7): { name: string; ms: number; baseline: number }[] {
  const results: { name: string; ms: number; baseline: number }[] = [];
  for (const [shape, build] of [
    ['chain', chain],
    ['wide', wide],
  ] as const) {
    // Marshal builds fresh vertices each run: marshal results are memoized per marshal call only.
    const states = Array.from({ length: runs + 2 }, () => build(N));
    let k = 0;
    const marshalMs = median(timeRuns(() => marshal(states[k++]!, { platform: LinuxAmd64 }), runs));
    const def = marshal(build(N), { platform: LinuxAmd64 });
    const bytes = def.toBytes();
    const ops = def.def.map((b) => pb.Op.decode(b));
    const encodeMs = median(
      timeRuns(() => {
        for (const op of ops) createHash('sha256').update(pb.Op.encode(op).finish()).digest();
      }, runs),
    );
    const parseMs = median(timeRuns(() => parseDefinition(bytes), runs));
    const decodeMs = median(
      timeRuns(() => {
        const d = pb.Definition.decode(bytes);
        for (const b of d.def) {
          pb.Op.decode(b);
          createHash('sha256').update(b).digest();
        }
      }, runs),
    );
    if (def.def.length !== N + 1)
      throw new Error(`${shape}: expected ${N + 1} ops, got ${def.def.length}`);
    results.push({ name: `${shape} marshal+digest`, ms: marshalMs, baseline: encodeMs });
    results.push({ name: `${shape} parse+validate`, ms: parseMs, baseline: decodeMs });
  }
  printTable(
    `LLB, ${N.toLocaleString('en')} vertices (median of ${runs}; baseline = bare protobuf encode/decode + sha256 of the same ops)`,
    ['case', 'kiln ms', 'baseline ms', 'ratio', 'target', 'ok'],
    results.map((r) => [
      r.name,
      r.ms,
      r.baseline,
      `${(r.ms / r.baseline).toFixed(2)}x`,
      '< 300 ms',
      r.ms < 300 ? 'yes' : 'NO',
    ]),
  );
  return results;
}
