import { describe, expect, it } from 'vitest';
import { http, image, local, marshal, parseDefinition } from '@kiln/llb';
import type { State } from '@kiln/llb';
import { contentKeyedOp, fastKey, volatileSource } from './fast-key.js';

function execOp(args: string[]) {
  const g = parseDefinition(marshal(image('busybox').run({ args }).root()).toProto());
  return g.ops.get(g.result.digest)!.op;
}

describe('fastKey', () => {
  it('is deterministic and depends on the op, the platform, the input results and the nonce', () => {
    const op = execOp(['echo', 'a']);
    const k = { op, platform: 'linux/amd64', inputResultIds: ['r1'] };
    expect(fastKey(k)).toBe(fastKey({ ...k, op: execOp(['echo', 'a']) }));
    expect(fastKey(k)).toMatch(/^sha256:[0-9a-f]{64}$/);
    const others = [
      fastKey({ ...k, op: execOp(['echo', 'b']) }),
      fastKey({ ...k, platform: 'linux/arm64' }),
      fastKey({ ...k, inputResultIds: ['r2'] }),
      fastKey({ ...k, nonce: 'build-1' }),
    ];
    expect(new Set([fastKey(k), ...others]).size).toBe(5);
  });

  it('ignores how an input was produced: only its result id counts', () => {
    const op = execOp(['echo', 'a']);
    // Same op bytes apart from the input edge: the key is the same for the same input result.
    const stripped = { ...op, inputs: [] };
    expect(fastKey({ op, platform: 'linux/amd64', inputResultIds: ['r'] })).toBe(
      fastKey({ op: stripped, platform: 'linux/amd64', inputResultIds: ['r'] }),
    );
  });

  it('keys a content dep by its checksum and selectors instead of the result id', () => {
    const op = execOp(['echo', 'a']);
    const k = { op, platform: 'linux/amd64', inputResultIds: ['ctx-1'] };
    const dep = { digest: 'sha256:aa', selectors: ['/hello.txt'] };
    const byContent = fastKey({ ...k, contentDeps: [dep] });
    // The input's result id no longer counts, the checksum and the selectors do.
    expect(fastKey({ ...k, inputResultIds: ['ctx-2'], contentDeps: [dep] })).toBe(byContent);
    expect(fastKey({ ...k, contentDeps: [{ ...dep, digest: 'sha256:bb' }] })).not.toBe(byContent);
    expect(fastKey({ ...k, contentDeps: [{ ...dep, selectors: ['/other.txt'] }] })).not.toBe(
      byContent,
    );
    // No checksum (the holder did not answer): the result id, as without content deps.
    expect(fastKey({ ...k, contentDeps: [undefined] })).toBe(fastKey(k));
    expect(fastKey(k)).not.toBe(byContent);
  });

  it('tells execs apart that mount different subpaths of the same input', () => {
    const base = image('busybox');
    const opOf = (selector: string) => {
      const st = base.run({
        args: ['cat', '/m/f'],
        mounts: [{ target: '/m', source: image('alpine'), selector, readonly: true }],
      });
      const g = parseDefinition(marshal(st.root()).toProto());
      return g.ops.get(g.result.digest)!.op;
    };
    const k = (selector: string) =>
      fastKey({ op: opOf(selector), platform: 'linux/amd64', inputResultIds: ['r0', 'r1'] });
    expect(k('/a')).not.toBe(k('/b'));
    expect(k('/a')).toBe(k('/a'));
  });

  it('resolves again in every build the sources whose content may change behind the same op', () => {
    const opOf = (st: State) => {
      const g = parseDefinition(marshal(st).toProto());
      return g.ops.get(g.result.digest)!.op;
    };
    const pinned = `busybox@sha256:${'a'.repeat(64)}`;
    expect(volatileSource(opOf(local('context')))).toBe(true);
    expect(volatileSource(opOf(image('busybox:latest')))).toBe(true);
    expect(volatileSource(opOf(image(pinned)))).toBe(false);
    expect(volatileSource(opOf(http('https://example.com/f')))).toBe(true);
    expect(
      volatileSource(opOf(http('https://example.com/f', { checksum: `sha256:${'b'.repeat(64)}` }))),
    ).toBe(false);
    expect(volatileSource(execOp(['true']))).toBe(false);
  });

  it('keys a local source by content without its session: other sessions meet, other patterns do not', () => {
    const opOf = (st: State) => {
      const g = parseDefinition(marshal(st).toProto());
      return g.ops.get(g.result.digest)!.op;
    };
    const key = (st: State, nonce: string) =>
      fastKey({
        op: contentKeyedOp(opOf(st)),
        platform: 'linux/amd64',
        inputResultIds: [],
        nonce,
      });
    const a = local('context', { sessionId: 's1', sharedKeyHint: 'h1', followPaths: ['x'] });
    const b = local('context', { sessionId: 's2', sharedKeyHint: 'h2', followPaths: ['x'] });
    const c = local('context', { sessionId: 's1', followPaths: ['y'] });
    expect(key(a, 'local-content m1')).toBe(key(b, 'local-content m1'));
    expect(key(a, 'local-content m1')).not.toBe(key(a, 'local-content m2'));
    expect(key(a, 'local-content m1')).not.toBe(key(c, 'local-content m1'));
    // The op itself keeps its session (the worker that runs it needs it).
    expect(opOf(a).source?.attrs?.['local.session']).toBe('s1');
    expect(contentKeyedOp(opOf(a)).source?.attrs?.['local.session']).toBeUndefined();
  });
});
