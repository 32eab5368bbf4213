import { randomBytes } from 'node:crypto';
import { pb } from '@kiln/protocol';
import { describe, expect, it } from 'vitest';
import { ancestors, dependents, levels, subgraph, toDefinition } from './dag.js';
import { _topoFrom, marshal, parseDefinition } from './definition.js';
import type { LoadedOp } from './definition.js';
import { InvalidDefinitionError } from './errors.js';
import { mkfile } from './fileop.js';
import { merge } from './merge-diff.js';
import { LinuxAmd64 } from '@kiln/protocol';
import { image } from './source.js';
import { scratch } from './state.js';
import { sha256Digest } from './vertex.js';

const enc = (op: pb.IOp): Uint8Array => pb.Op.encode(op).finish();
const def = (ops: Uint8Array[]): Uint8Array => pb.Definition.encode({ def: ops }).finish();
const terminalFor = (bytes: Uint8Array, index = 0): Uint8Array =>
  enc({
    inputs: [index ? { digest: sha256Digest(bytes), index } : { digest: sha256Digest(bytes) }],
  });

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(InvalidDefinitionError);
    return (e as InvalidDefinitionError).code;
  }
  throw new Error('expected an error');
}

const src = enc({ source: { identifier: 'docker-image://docker.io/library/busybox:latest' } });

describe('parseDefinition', () => {
  it('loads a valid graph with its result and topological order', () => {
    const st = image('busybox')
      .run({ args: ['true'] })
      .root();
    const d = marshal(st, { platform: LinuxAmd64 });
    const g = parseDefinition(d.toBytes());
    expect(g.order).toEqual(d.digests().slice(0, -1));
    expect(g.result.digest).toBe(d.digests()[1]);
    expect(g.ops.get(g.result.digest)!.op.exec?.meta?.args).toEqual(['true']);
  });

  it('rejects an empty definition', () => {
    expect(codeOf(() => parseDefinition(def([])))).toBe('LLB_EMPTY');
  });

  it('rejects a definition whose last op is not a terminal', () => {
    expect(codeOf(() => parseDefinition(def([src])))).toBe('LLB_NO_TERMINAL');
    const two = enc({ inputs: [{ digest: sha256Digest(src) }, { digest: sha256Digest(src) }] });
    expect(codeOf(() => parseDefinition(def([src, two])))).toBe('LLB_NO_TERMINAL');
  });

  it('rejects inputs that name ops not in the definition', () => {
    const exec = enc({
      inputs: [{ digest: 'sha256:' + '0'.repeat(64) }],
      exec: { meta: { args: ['true'], cwd: '/' }, mounts: [{ dest: '/' }] },
    });
    expect(codeOf(() => parseDefinition(def([exec, terminalFor(exec)])))).toBe(
      'LLB_DANGLING_INPUT',
    );
  });

  it('rejects a terminal that selects an output the op does not have', () => {
    expect(codeOf(() => parseDefinition(def([src, terminalFor(src, 3)])))).toBe(
      'LLB_BAD_OUTPUT_INDEX',
    );
    const ro = enc({
      inputs: [{ digest: sha256Digest(src) }],
      exec: {
        meta: { args: ['true'], cwd: '/' },
        mounts: [{ dest: '/', readonly: true, output: -1 }],
      },
    });
    expect(codeOf(() => parseDefinition(def([src, ro, terminalFor(ro)])))).toBe(
      'LLB_BAD_OUTPUT_INDEX',
    );
  });

  it('rejects ops of no known kind', () => {
    const empty = enc({ platform: { OS: 'linux', Architecture: 'amd64' } });
    expect(codeOf(() => parseDefinition(def([empty, terminalFor(empty)])))).toBe('LLB_UNKNOWN_OP');
    // An op kind from the future (field 99) decodes as no known kind too.
    const future = Buffer.from([0x9a, 0x06, 0x00]);
    expect(codeOf(() => parseDefinition(def([future, terminalFor(future)])))).toBe(
      'LLB_UNKNOWN_OP',
    );
  });

  it('rejects inconsistent ops', () => {
    const noArgs = enc({
      inputs: [{ digest: sha256Digest(src) }],
      exec: { meta: { cwd: '/' }, mounts: [{ dest: '/' }] },
    });
    expect(codeOf(() => parseDefinition(def([src, noArgs, terminalFor(noArgs)])))).toBe(
      'LLB_INVALID_OP',
    );
    const badMount = enc({
      inputs: [{ digest: sha256Digest(src) }],
      exec: { meta: { args: ['x'], cwd: '/' }, mounts: [{ dest: '/' }, { dest: '/m', input: 5 }] },
    });
    expect(codeOf(() => parseDefinition(def([src, badMount, terminalFor(badMount)])))).toBe(
      'LLB_INVALID_OP',
    );
    const badAction = enc({
      file: { actions: [{ input: 2, secondaryInput: -1, mkdir: { path: '/x' } }] },
    });
    expect(codeOf(() => parseDefinition(def([badAction, terminalFor(badAction)])))).toBe(
      'LLB_INVALID_OP',
    );
  });

  it('detects cycles in a graph', () => {
    const fake = (digest: string, inputs: string[]): LoadedOp => ({
      digest,
      bytes: new Uint8Array(),
      op: pb.Op.create({ inputs: inputs.map((d) => pb.Input.create({ digest: d })) }),
      metadata: undefined,
      outputs: 1,
    });
    const ops = new Map([
      ['a', fake('a', ['b'])],
      ['b', fake('b', ['c'])],
      ['c', fake('c', ['a'])],
    ]);
    expect(codeOf(() => _topoFrom('a', ops))).toBe('LLB_CYCLE');
    const self = new Map([['s', fake('s', ['s'])]]);
    expect(codeOf(() => _topoFrom('s', self))).toBe('LLB_CYCLE');
  });

  it('turns malformed and random bytes into typed errors, never a crash', () => {
    const valid = marshal(
      image('busybox')
        .run({ args: ['sh', '-c', 'echo hi'] })
        .root(),
    ).toBytes();
    let seed = 42;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const inputs: Uint8Array[] = [];
    for (let i = 0; i < 1500; i++) inputs.push(randomBytes(rnd(200)));
    for (let i = 0; i < 1500; i++) {
      const b = Buffer.from(valid);
      const flips = 1 + rnd(4);
      for (let j = 0; j < flips; j++) b[rnd(b.length)] = rnd(256);
      inputs.push(rnd(3) === 0 ? b.subarray(0, rnd(b.length)) : b);
    }
    let accepted = 0;
    for (const bytes of inputs) {
      try {
        parseDefinition(bytes);
        accepted++;
      } catch (e) {
        expect(e).toBeInstanceOf(InvalidDefinitionError);
      }
    }
    // Most mutations must be caught; a flip inside a string can still leave a valid graph.
    expect(accepted).toBeLessThan(inputs.length / 4);
  });
});

describe('DAG helpers', () => {
  const base = image('busybox');
  const a = base.run({ args: ['touch', '/a'] }).root();
  const b = base.run({ args: ['touch', '/b'] }).root();
  const c = scratch().file(mkfile('/c', 0o644, 'c'));
  const top = merge([a, b, c]);
  const g = parseDefinition(marshal(top).toBytes());
  const [dBase, dA, dB, dC, dTop] = g.order;

  it('orders inputs before their readers', () => {
    expect(g.order).toHaveLength(5);
    expect(g.order.at(-1)).toBe(g.result.digest);
    expect(dTop).toBe(g.result.digest);
  });

  it('finds ancestors, dependents and levels', () => {
    expect(ancestors(g, dA!)).toEqual([dBase, dA]);
    expect(dependents(g).get(dBase!)).toEqual([dA, dB]);
    expect(levels(g)).toEqual([[dBase, dC], [dA, dB], [dTop]]);
  });

  it('cuts a subgraph that marshals to a valid definition of its own', () => {
    const sub = subgraph(g, { digest: dA!, index: 0 });
    expect(sub.order).toEqual([dBase, dA]);
    const again = parseDefinition(toDefinition(sub).toBytes());
    expect(again.result.digest).toBe(dA);
    expect(again.order).toEqual([dBase, dA]);
  });
});
