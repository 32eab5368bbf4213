// RUN: every --mount type, secrets and ssh (never in args, env, names or the image config),
// --network/--security, heredocs.
import { describe, expect, it } from 'vitest';
import { pb } from '@kiln/protocol';
import { convertInspect } from '../test-support/llb-inspect.js';
import { imageConfigToJson } from './image-config.js';

function mountsOf(exec: pb.IExecOp): pb.IMount[] {
  return exec.mounts ?? [];
}

describe('RUN --mount', () => {
  it('bind: from the context (read-only, a path selected), from a stage, read-write without output', async () => {
    const r = await convertInspect(
      'FROM busybox AS tools\nRUN mkdir /bin2\nFROM busybox\nWORKDIR /w\nRUN --mount=source=src,target=/src --mount=type=bind,from=tools,source=/bin2,target=rel,rw make\n',
    );
    const run = r.named('RUN --mount');
    const [root, src, w] = mountsOf(run.op.exec!);
    expect([root!.dest, Number(root!.output)]).toEqual(['/', 0]);
    expect([w!.dest, w!.selector, Number(w!.output), w!.readonly]).toEqual([
      '/w/rel',
      '/bin2',
      -1,
      false,
    ]);
    expect([src!.dest, src!.selector, Number(src!.output), src!.readonly]).toEqual([
      '/src',
      '/src',
      -1,
      true,
    ]);
    expect(run.inputs).toContain(r.named('RUN mkdir /bin2').digest);
    expect(run.inputs).toContain(
      r.ofKind('source').find((o) => o.op.source?.identifier === 'local://context')!.digest,
    );
    expect(run.op.exec!.meta!.args).toEqual(['/bin/sh', '-c', 'make']);
  });

  it('cache: id defaults to the target, sharing, from=, uid/gid/mode through a prepared directory', async () => {
    const r = await convertInspect(
      'FROM busybox\nRUN --mount=type=cache,target=/root/.cache/ --mount=type=cache,id=gomod,target=/go/pkg,sharing=locked --mount=type=cache,target=/var/cache/apt,uid=100,gid=101,mode=0700 true\n',
      { cacheIdNamespace: 'ns' },
    );
    const exec = r.execs()[0]!;
    const caches = mountsOf(exec).filter((m) => m.mountType === pb.MountType.CACHE);
    expect(
      caches.map((m) => [
        m.dest,
        m.cacheOpt?.ID,
        m.cacheOpt?.sharing ?? pb.CacheSharingOpt.SHARED,
        m.selector ?? '',
      ]),
    ).toEqual([
      ['/go/pkg', 'ns/gomod', pb.CacheSharingOpt.LOCKED, ''],
      ['/root/.cache/', 'ns//root/.cache', pb.CacheSharingOpt.SHARED, ''],
      ['/var/cache/apt', 'ns//var/cache/apt', pb.CacheSharingOpt.SHARED, '/cache'],
    ]);
    const perms = r.named('[internal] settings cache mount permissions');
    expect(perms.op.file!.actions![0]!.mkdir).toMatchObject({
      path: '/cache',
      mode: 0o700,
      owner: { user: { byID: 100 }, group: { byID: 101 } },
    });
    // Cache mounts without from= never read the context.
    expect(r.ofKind('source').some((o) => o.op.source?.identifier === 'local://context')).toBe(
      false,
    );
  });

  it('tmpfs with a size', async () => {
    const r = await convertInspect(
      'FROM busybox\nRUN --mount=type=tmpfs,target=/tmp,size=64m true\n',
    );
    const m = mountsOf(r.execs()[0]!)[1]!;
    expect([m.dest, m.mountType, Number(m.TmpfsOpt?.size), Number(m.output)]).toEqual([
      '/tmp',
      pb.MountType.TMPFS,
      64 * 1024 * 1024,
      -1,
    ]);
  });

  it('secret and ssh mounts: ids, targets, env, modes, required', async () => {
    const r = await convertInspect(
      [
        'FROM busybox',
        'RUN --mount=type=secret,id=npmrc,target=/root/.npmrc,mode=0440,uid=1 \\',
        '    --mount=type=secret,id=aws \\',
        '    --mount=type=secret,id=token,env=TOKEN,required \\',
        '    --mount=type=secret,source=src-id,target=/s \\',
        '    --mount=type=ssh \\',
        '    --mount=type=ssh,id=github,target=/ssh.sock,required=true,mode=0666 \\',
        '    echo $TOKEN > /dev/null',
        '',
      ].join('\n'),
    );
    const exec = r.execs()[0]!;
    const secrets = mountsOf(exec).filter((m) => m.mountType === pb.MountType.SECRET);
    expect(secrets.map((m) => [m.dest, m.secretOpt])).toEqual([
      [
        '/root/.npmrc',
        expect.objectContaining({ ID: 'npmrc', uid: 1, mode: 0o440, optional: true }),
      ],
      ['/run/secrets/aws', expect.objectContaining({ ID: 'aws', optional: true })],
      ['/s', expect.objectContaining({ ID: 'src-id', optional: true })],
    ]);
    expect(exec.secretenv).toEqual([expect.objectContaining({ ID: 'token', name: 'TOKEN' })]);
    expect(exec.secretenv![0]!.optional).toBeFalsy();
    const ssh = mountsOf(exec).filter((m) => m.mountType === pb.MountType.SSH);
    expect(
      ssh.map((m) => [m.dest, m.SSHOpt?.ID ?? '', m.SSHOpt?.optional ?? false, m.SSHOpt?.mode]),
    ).toEqual([
      ['/run/buildkit/ssh_agent.0', '', true, 0o600],
      ['/ssh.sock', 'github', false, 0o666],
    ]);
    expect(exec.meta!.env).toContain('SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0');
    // The secret env shows masked in the step name.
    expect(r.named('RUN --mount').name).toContain('echo **** > /dev/null');
  });

  it('secret values never reach args, env, the image config or its history', async () => {
    const r = await convertInspect(
      'FROM busybox\nRUN --mount=type=secret,id=dbpass,env=DB_PASS psql\nCMD ["app"]\n',
      { buildArgs: { DB_PASS: 'not-a-build-arg' } },
    );
    const exec = r.execs()[0]!;
    expect(exec.meta!.args).toEqual(['/bin/sh', '-c', 'psql']);
    expect((exec.meta!.env ?? []).some((e) => e.startsWith('DB_PASS'))).toBe(false);
    const json = imageConfigToJson(r.result.imageConfig);
    expect(json).not.toContain('dbpass');
    expect(json).not.toContain('DB_PASS');
  });

  it('--network and --security', async () => {
    const r = await convertInspect(
      'FROM busybox\nRUN --network=none a\nRUN --network=host --security=insecure b\nRUN --network=default --security=sandbox c\n',
    );
    const [a, b, c] = r.execs();
    expect(a!.network).toBe(pb.NetMode.NONE);
    expect([b!.network, b!.security]).toEqual([pb.NetMode.HOST, pb.SecurityMode.INSECURE]);
    expect(c!.network ?? pb.NetMode.UNSET).toBe(pb.NetMode.UNSET);
    expect(c!.security ?? pb.SecurityMode.SANDBOX).toBe(pb.SecurityMode.SANDBOX);
  });

  it('--add-host, --hostname and the image resolve mode', async () => {
    const r = await convertInspect('FROM busybox\nRUN true\n', {
      extraHosts: [{ host: 'db', ip: '10.0.0.2' }],
      hostname: 'builder',
      imageResolveMode: 'pull',
    });
    const exec = r.execs()[0]!;
    expect(exec.meta!.extraHosts).toEqual([
      expect.objectContaining({ Host: 'db', IP: '10.0.0.2' }),
    ]);
    expect(exec.meta!.hostname).toBe('builder');
    expect(r.ofKind('source')[0]!.op.source!.attrs).toEqual({ 'image.resolvemode': 'pull' });
  });

  it('mount values expand stage variables', async () => {
    const r = await convertInspect(
      'FROM busybox\nARG CACHE=/cache/go\nRUN --mount=type=cache,target=$CACHE,id=go-${CACHE} true\n',
    );
    expect(mountsOf(r.execs()[0]!)[1]).toMatchObject({
      dest: '/cache/go',
      cacheOpt: { ID: '/go-/cache/go' },
    });
  });
});

describe('RUN heredocs', () => {
  it('a plain heredoc is the shell script', async () => {
    const r = await convertInspect('FROM busybox\nRUN <<EOF\necho one\necho two\nEOF\n');
    const run = r.named('RUN <<EOF');
    expect(run.name).toBe('[2/2] RUN <<EOF (echo one...)');
    expect(run.op.exec!.meta!.args).toEqual(['/bin/sh', '-c', 'echo one\necho two\n']);
  });

  it('<<- strips leading tabs', async () => {
    const r = await convertInspect('FROM busybox\nRUN <<-EOF\n\techo one\n\tEOF\n');
    expect(r.execs()[0]!.meta!.args).toEqual(['/bin/sh', '-c', 'echo one\n']);
  });

  it('a heredoc with a shebang is written to a file, mounted and executed', async () => {
    const r = await convertInspect(
      'FROM busybox\nRUN <<EOF\n#!/usr/bin/env python3\nprint("hi")\nEOF\n',
    );
    const exec = r.execs()[0]!;
    expect(exec.meta!.args).toEqual(['/bin/sh', '-c', '/dev/pipes/EOF']);
    expect(mountsOf(exec)[1]).toMatchObject({ dest: '/dev/pipes/', selector: '/', readonly: true });
    const file = r.named('[internal] preparing inline document');
    expect(file.op.file!.actions![0]!.mkfile).toMatchObject({
      path: '/EOF',
      mode: 0o755,
      data: Buffer.from('#!/usr/bin/env python3\nprint("hi")\n'),
    });
  });

  it('a command with heredocs is passed whole to the shell', async () => {
    const r = await convertInspect(
      'FROM busybox\nRUN cat <<A > /a && cat <<B > /b\nfirst\nA\nsecond\nB\n',
    );
    expect(r.execs()[0]!.meta!.args).toEqual([
      '/bin/sh',
      '-c',
      'cat <<A > /a && cat <<B > /b\nfirst\nA\nsecond\nB',
    ]);
  });
});
