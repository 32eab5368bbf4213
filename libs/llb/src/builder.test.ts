import { pb } from '@kiln/protocol';
import { describe, expect, it } from 'vitest';
import { marshal, parseDefinition } from './definition.js';
import { copy, mkdir, mkfile, parseChown } from './fileop.js';
import { build, diff, merge } from './merge-diff.js';
import { LinuxAmd64, LinuxArm64, parsePlatform } from '@kiln/protocol';
import { normalizeImageReference } from './reference.js';
import { git, image, local } from './source.js';
import { scratch } from './state.js';
import { shlexSplit } from './shlex.js';

const ops = (st: Parameters<typeof marshal>[0]) => {
  const g = parseDefinition(marshal(st, { platform: LinuxAmd64, localUniqueId: 'u' }).toBytes());
  return g.order.map((d) => g.ops.get(d)!.op);
};

describe('states are immutable', () => {
  it('never changes a state a method was called on', () => {
    const a = image('busybox').addEnv('A', '1').dir('/src');
    const b = a.addEnv('B', '2').dir('sub').user('nobody');
    expect(a.env()).toEqual(['A=1']);
    expect(a.getDir()).toBe('/src');
    expect(b.env()).toEqual(['A=1', 'B=2']);
    expect(b.getDir()).toBe('/src/sub');
    expect(b.output).toBe(a.output);
  });

  it('replacing an env var moves it to the end, as BuildKit does', () => {
    expect(image('x').addEnv('A', '1').addEnv('B', '2').addEnv('A', '3').env()).toEqual([
      'B=2',
      'A=3',
    ]);
  });

  it('marshals the same graph to the same bytes every time', () => {
    const st = image('busybox')
      .run({ args: ['echo', 'hi'] })
      .root();
    expect(Buffer.from(marshal(st).toBytes())).toEqual(Buffer.from(marshal(st).toBytes()));
  });
});

describe('exec', () => {
  it('writes every mount kind and numbers writable outputs in target order', () => {
    const st = image('busybox').run({
      args: ['sh'],
      mounts: [
        { target: '/z-out' },
        { target: '/a-out', source: image('alpine') },
        { target: '/cache', cache: { id: 'c', sharing: 'private' } },
        { target: '/tmp', tmpfs: {} },
      ],
      secrets: [{ id: 's', env: 'TOKEN' }],
    });
    const exec = ops(st.getMount('/z-out')).find((o) => o.exec)!.exec!;
    const mounts = new Map(exec.mounts!.map((m) => [m.dest ?? '', m] as const));
    const byDest = (d: string) => mounts.get(d)!;
    expect(Number(byDest('/').output)).toBe(0);
    expect(Number(byDest('/a-out').output)).toBe(1);
    expect(Number(byDest('/z-out').output)).toBe(2);
    expect(Number(byDest('/z-out').input)).toBe(-1);
    expect(byDest('/cache').cacheOpt!.sharing).toBe(pb.CacheSharingOpt.PRIVATE);
    expect(byDest('/tmp').mountType).toBe(pb.MountType.TMPFS);
    expect(exec.secretenv![0]!.name).toBe('TOKEN');
  });

  it('adds SSH_AUTH_SOCK for the first ssh mount', () => {
    const exec = ops(
      image('busybox')
        .run({ args: ['ssh-add', '-l'], ssh: [{}] })
        .root(),
    ).find((o) => o.exec)!.exec!;
    expect(exec.meta!.env).toEqual(['SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0']);
  });

  it('refuses an exec without arguments; scratch starts in / as in BuildKit', () => {
    expect(() => marshal(image('busybox').run({}).root())).toThrow(/arguments are required/);
    const exec = ops(
      scratch()
        .run({ args: ['x'] })
        .root(),
    ).find((o) => o.exec)!.exec!;
    expect(exec.meta!.cwd).toBe('/');
  });
});

describe('file ops', () => {
  it('chains actions, resolves relative paths against the working dir, and keeps a trailing slash on copy dest', () => {
    const ctx = local('ctx');
    const st = image('busybox')
      .dir('/app')
      .file(
        mkdir('data', 0o700)
          .mkfile('data/f', 0o644, 'x')
          .copy(ctx, 'src/', 'dst/')
          .symlink('f', 'data/link'),
      );
    const file = ops(st).find((o) => o.file)!.file!;
    const [a0, a1, a2, a3] = file.actions!;
    expect(a0!.mkdir!.path).toBe('/app/data');
    expect(a1!.mkfile!.path).toBe('/app/data/f');
    expect(a2!.copy!.src).toBe('/src');
    expect(a2!.copy!.dest).toBe('/app/dst/');
    expect(a3!.symlink!.newpath).toBe('/app/data/link');
    expect(a3!.symlink!.oldpath).toBe('f');
    expect(file.actions!.map((a) => Number(a.output))).toEqual([-1, -1, -1, 0]);
  });

  it('parses chown specs as BuildKit does', () => {
    expect(parseChown('root')).toEqual({ user: 0 });
    expect(parseChown('1000:1000')).toEqual({ user: 1000, group: 1000 });
    expect(parseChown('app:staff')).toEqual({ user: 'app', group: 'staff' });
  });

  it('writes a numeric owner 0 (root) explicitly', () => {
    const st = scratch().file(mkfile('/f', 0o644, '', { chown: 'root:root' }));
    const a = ops(st)[0]!.file!.actions![0]!.mkfile!;
    expect(a.owner!.user!.byID).toBe(0);
    // Present on the wire (an own property after decoding), not just the proto3 default.
    expect(Object.prototype.hasOwnProperty.call(a.owner!.user, 'byID')).toBe(true);
  });

  it('copies from another action chain with withState', () => {
    const src = mkdir('/out', 0o755).mkfile('/out/x', 0o644, 'x').withState(scratch());
    const st = image('busybox').file(copy(src, '/out/x', '/x'));
    const file = ops(st).find((o) => o.file)!.file!;
    expect(file.actions).toHaveLength(3);
    expect(Number(file.actions![2]!.secondaryInput)).toBe(1 + 1); // one op input + action index 1
  });
});

describe('merge, diff, build', () => {
  it('drops scratch from merges and short-cuts trivial ones', () => {
    const a = image('a');
    expect(merge([scratch(), a])).toBe(a);
    expect(merge([]).isScratch()).toBe(true);
    expect(diff(scratch(), a)).toBe(a);
    expect(diff(a, a).isScratch()).toBe(true);
  });

  it('marshals a nested build op', () => {
    const op = ops(build(image('busybox').file(mkfile('/def.pb', 0o644, 'x')), 'def.pb')).at(-1)!;
    expect(op.build!.attrs!).toEqual({ 'llbbuild.filename': 'def.pb' });
  });
});

describe('sources and platforms', () => {
  it('normalizes image references like docker', () => {
    expect(normalizeImageReference('busybox')).toBe('docker.io/library/busybox:latest');
    expect(normalizeImageReference('user/app:1')).toBe('docker.io/user/app:1');
    expect(normalizeImageReference('localhost:5000/a/b')).toBe('localhost:5000/a/b:latest');
    expect(() => normalizeImageReference('Bad/Name')).toThrow(/invalid image reference/);
  });

  it('keeps the platform of a platform-specific source on the ops built on it', () => {
    const op = ops(
      image('busybox', { platform: LinuxArm64 })
        .run({ args: ['true'] })
        .root(),
    ).at(-1)!;
    expect(op.platform!.Architecture).toBe('arm64');
    expect(parsePlatform('linux/arm64/v8')).toEqual(LinuxArm64);
    expect(parsePlatform('arm')).toEqual({ os: 'linux', architecture: 'arm', variant: 'v7' });
    expect(() => parsePlatform('linux//x')).toThrow(/invalid platform/);
  });

  it('writes git sources with their ssh attributes', () => {
    const op = ops(git('git@github.com:moby/buildkit.git', 'main'))[0]!;
    expect(op.source!.identifier).toBe('git://git@github.com/moby/buildkit.git#main');
    expect(op.source!.attrs!['git.mountsshsock']).toBe('default');
  });

  it('splits command lines like shlex', () => {
    expect(shlexSplit(`sh -c 'echo "a b"' "x\\"y" z\\ w # comment`)).toEqual([
      'sh',
      '-c',
      'echo "a b"',
      'x"y',
      'z w',
    ]);
    expect(() => shlexSplit(`'open`)).toThrow(/unclosed/);
  });
});
