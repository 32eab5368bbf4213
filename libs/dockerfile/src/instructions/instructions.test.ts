// Instruction parsing: BuildKit's instructions/parse_test.go, bflag_test.go and
// commands_runmount tests where they apply, plus every instruction's flags.
import { describe, expect, it } from 'vitest';
import { DockerfileError } from '../dockerfile-error.js';
import { parse } from '../parser/parser.js';
import { BFlags } from './bflag.js';
import type { Command, Stage } from './commands.js';
import { parseInstruction, parseInstructions } from './parse.js';
import { parseMount } from './runmount.js';

function stagesOf(text: string): Stage[] {
  return parseInstructions(parse(text).ast).stages;
}

function commandOf(line: string): Command {
  const stages = stagesOf(`FROM scratch\n${line}\n`);
  return stages[0]!.commands[0]!;
}

function parseError(text: string): DockerfileError {
  try {
    parseInstructions(parse(text).ast);
  } catch (err) {
    if (err instanceof DockerfileError) return err;
    throw err;
  }
  throw new Error('expected a DockerfileError');
}

describe('BFlags (bflag_test.go)', () => {
  it('parses bools, strings and repeated strings', () => {
    const bf = new BFlags(['--str1=BOO', '--bool1', '--bool2=false', '--strs=a', '--strs=b']);
    const str1 = bf.addString('str1', 'HI');
    const str2 = bf.addString('str2', 'HI');
    const bool1 = bf.addBool('bool1', false);
    const bool2 = bf.addBool('bool2', true);
    const strs = bf.addStrings('strs');
    bf.parse();
    expect(str1.value).toBe('BOO');
    expect(str2.value).toBe('HI');
    expect(str2.isUsed()).toBe(false);
    expect(bool1.isTrue()).toBe(true);
    expect(bool2.isTrue()).toBe(false);
    expect(strs.stringValues).toEqual(['a', 'b']);
    expect(bf.usedNames()).toEqual(['str1', 'bool1', 'bool2', 'strs']);
  });

  it.each([
    [['--bool1=xxx'], 'expecting boolean value for flag --bool1, not: xxx'],
    [['--bool1='], 'missing a value on flag: --bool1'],
    [['--str1'], 'missing a value on flag: --str1'],
    [['--nope=1'], 'unknown flag: --nope'],
    [['--str=1'], 'unknown flag: --str (did you mean --str1?)'],
    [['--str1=a', '--str1=b'], 'duplicate flag specified: --str1'],
    [['-str1=a'], 'arg should start with -- : -str1=a'],
  ])('rejects %j', (args, msg) => {
    const bf = new BFlags(args);
    bf.addString('str1', '');
    bf.addBool('bool1', false);
    expect(() => bf.parse()).toThrow(msg);
  });

  it('stops at --', () => {
    const bf = new BFlags(['--', '--whatever']);
    bf.parse();
    expect(bf.usedNames()).toEqual([]);
  });
});

describe('stages and meta ARGs', () => {
  it('splits stages, names them in lower case, keeps ARGs before FROM apart', () => {
    const { stages, metaArgs } = parseInstructions(
      parse(
        'ARG A=1 B\nARG C\n# Build the app\nFROM --platform=$BUILDPLATFORM golang AS Build\nRUN x\nFROM build\n',
      ).ast,
    );
    expect(metaArgs.map((a) => a.args)).toEqual([
      [
        { key: 'A', value: '1', comment: '' },
        { key: 'B', value: undefined, comment: '' },
      ],
      [{ key: 'C', value: undefined, comment: '' }],
    ]);
    expect(stages).toHaveLength(2);
    expect(stages[0]).toMatchObject({
      name: 'build',
      baseName: 'golang',
      platform: '$BUILDPLATFORM',
      startLine: 4,
    });
    expect(stages[0]!.commands.map((c) => c.kind)).toEqual(['run']);
    expect(stages[1]).toMatchObject({ name: '', baseName: 'build' });
  });

  it('reads a stage doc comment', () => {
    expect(stagesOf('# base the base stage\nFROM x AS base\n')[0]!.docComment).toBe(
      'the base stage',
    );
  });

  it.each([
    ['FROM', 'FROM requires either one or three arguments'],
    ['FROM a b', 'FROM requires either one or three arguments'],
    [
      'FROM a AS 1abc',
      'invalid name for build stage: "1abc", name can\'t start with a number or contain symbols',
    ],
    ['FROM --nope=x a', 'unknown flag: --nope'],
  ])('rejects %s', (line, msg) => {
    expect(parseError(line).message).toContain(msg);
  });

  it('requires a FROM before commands', () => {
    const err = parseError('RUN x\n');
    expect(err.message).toBe('no build stage in current context');
    expect(err.startLine).toBe(1);
  });
});

describe('error cases (parse_test.go TestErrorCases)', () => {
  it.each([
    [
      'COPY\t\n\t\tquux \\\n      bar',
      'COPY requires at least two arguments, but only one was provided. Destination could not be determined',
    ],
    ['ONBUILD FROM scratch', "FROM isn't allowed as an ONBUILD trigger"],
    ['ONBUILD MAINTAINER docker.io', "MAINTAINER isn't allowed as an ONBUILD trigger"],
    ['MAINTAINER --boo joe@example.com', 'unknown flag: --boo'],
    ['ONBUILD ONBUILD RUN touch foobar', "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"],
    ['FOO bar', 'unknown instruction: FOO'],
    ['RUNN echo', 'unknown instruction: RUNN (did you mean RUN?)'],
    ['WORKDIR', 'WORKDIR requires exactly one argument'],
    ['USER', 'USER requires exactly one argument'],
    ['STOPSIGNAL', 'STOPSIGNAL requires exactly one argument'],
    ['EXPOSE', 'EXPOSE requires at least one argument'],
    ['VOLUME', 'VOLUME requires at least one argument'],
    ['ARG', 'ARG requires at least one argument'],
    ['ARG =x', 'ARG names can not be blank'],
    ['SHELL /bin/sh -c', 'SHELL requires the arguments to be in JSON form'],
    ['SHELL []', 'SHELL requires at least one argument'],
    ['HEALTHCHECK', 'HEALTHCHECK requires at least one argument'],
    ['HEALTHCHECK NONE x', 'HEALTHCHECK NONE takes no arguments'],
    ['HEALTHCHECK FOO x', 'Unknown type "FOO" in HEALTHCHECK (try CMD)'],
    ['HEALTHCHECK CMD', 'Missing command after HEALTHCHECK CMD'],
    ['HEALTHCHECK --interval=1ns CMD x', 'Interval "interval" cannot be less than 1ms'],
    ['HEALTHCHECK --retries=-1 CMD x', '--retries cannot be negative (-1)'],
    ['HEALTHCHECK --timeout=abc CMD x', 'time: invalid duration "abc"'],
    ['COPY <<EOF <<EOF2\na\nEOF\nb\nEOF2', 'COPY cannot accept a heredoc as a destination'],
    ['RUN --network=bridge x', 'unsupported network mode "bridge"'],
    ['RUN --security=privileged x', 'security mode "privileged" is not valid'],
    [
      'RUN --mount=type=cache,from=$X,target=/x x',
      "'from' doesn't support variable expansion, define alias stage instead",
    ],
    ['COPY --nope a b', 'unknown flag: --nope'],
    ['COPY --form=x a b', 'unknown flag: --form (did you mean --from?)'],
    ['ADD --from=x a b', 'unknown flag: --from'],
  ])('%s', (line, msg) => {
    const err = parseError(`FROM scratch\n${line}\n`);
    expect(err.message).toBe(`dockerfile parse error on line 2: ${msg}`);
    expect(err.startLine).toBe(2);
  });

  it('carries the whole line range of a continued instruction', () => {
    const err = parseError('FROM scratch\nCOPY --bad \\\n  a \\\n  b\n');
    expect([err.startLine, err.endLine]).toEqual([2, 4]);
  });
});

describe('argument counts (parse_test.go)', () => {
  const first = (text: string): Parameters<typeof parseInstruction>[0] =>
    parse(text).ast.children[0]!;

  it.each(['MAINTAINER', 'WORKDIR', 'USER', 'STOPSIGNAL'])(
    '%s requires exactly one argument',
    (cmd) => {
      expect(() => parseInstruction(first(cmd))).toThrow(`${cmd} requires exactly one argument`);
    },
  );

  it.each(['ENV', 'LABEL', 'ONBUILD', 'HEALTHCHECK', 'EXPOSE', 'VOLUME'])(
    '%s requires at least one argument',
    (cmd) => {
      expect(() => parseInstruction(first(cmd))).toThrow(`${cmd} requires at least one argument`);
    },
  );

  it.each(['ADD', 'COPY'])('%s requires a destination', (cmd) => {
    expect(() => parseInstruction(first(`${cmd} arg1`))).toThrow(
      `${cmd} requires at least two arguments, but only one was provided. Destination could not be determined`,
    );
  });

  it('HEALTHCHECK CMD in shell form is CMD-SHELL (TestHealthCheckCmd)', () => {
    const ins = parseInstruction(first('HEALTHCHECK CMD hello world'));
    expect(
      ins.kind === 'command' && ins.command.kind === 'healthcheck' && ins.command.health.test,
    ).toEqual(['CMD-SHELL', 'hello world']);
  });

  it('records the flags a RUN used (TestRunCmdFlagsUsed)', () => {
    const ins = parseInstruction(first('RUN --mount=type=tmpfs,target=/foo/ echo hello'));
    expect(ins.kind === 'command' && ins.command.kind === 'run' && ins.command.flagsUsed).toEqual([
      'mount',
    ]);
  });

  it('reads ARG and stage doc comments (TestCommentsDetection)', () => {
    const dt =
      '# foo sets foo\nARG foo=bar\n\n# base defines first stage\nFROM busybox AS base\n# this is irrelevant\nARG foo\n# bar defines bar\n# baz is something else\nARG bar baz=123\n';
    const { stages, metaArgs } = parseInstructions(parse(dt).ast);
    expect(stages[0]!.docComment).toBe('defines first stage');
    expect(metaArgs[0]!.args[0]).toMatchObject({ key: 'foo', comment: 'sets foo' });
    const [a, b] = stages[0]!.commands;
    expect(a!.kind === 'arg' && a.args[0]).toMatchObject({ key: 'foo', comment: '' });
    expect(b!.kind === 'arg' && b.args).toMatchObject([
      { key: 'bar', comment: 'defines bar' },
      { key: 'baz', comment: 'is something else' },
    ]);
  });
});

describe('commands', () => {
  it('ENV and LABEL: key=value pairs and the legacy form', () => {
    expect(commandOf('ENV A=1 B="x y"')).toMatchObject({
      kind: 'env',
      env: [
        { key: 'A', value: '1' },
        { key: 'B', value: '"x y"' },
      ],
    });
    expect(commandOf('ENV A b c')).toMatchObject({
      kind: 'env',
      env: [{ key: 'A', value: 'b c', noDelim: true }],
    });
    expect(commandOf('LABEL a=b "c d"=e')).toMatchObject({
      kind: 'label',
      labels: [
        { key: 'a', value: 'b' },
        { key: '"c d"', value: 'e' },
      ],
    });
  });

  it('RUN: shell and exec forms, flags, heredocs', () => {
    expect(commandOf('RUN echo  hi')).toMatchObject({
      kind: 'run',
      cmdLine: ['echo  hi'],
      prependShell: true,
      code: 'RUN echo  hi',
    });
    expect(commandOf('RUN ["echo", "hi"]')).toMatchObject({
      cmdLine: ['echo', 'hi'],
      prependShell: false,
    });
    expect(
      commandOf('RUN --network=none --security=insecure --mount=type=tmpfs,target=/t true'),
    ).toMatchObject({
      network: 'none',
      security: 'insecure',
      mountSpecs: ['type=tmpfs,target=/t'],
      flagsUsed: ['network', 'security', 'mount'],
    });
    const c = stagesOf('FROM x\nRUN <<EOF bash\n\techo hi\nEOF\n')[0]!.commands[0]!;
    expect(c).toMatchObject({
      kind: 'run',
      cmdLine: ['<<EOF bash'],
      files: [{ name: 'EOF', data: '\techo hi\n', chomp: false }],
    });
  });

  it('COPY and ADD: every flag, heredoc sources', () => {
    expect(
      commandOf(
        'COPY --from=build --chown=1:2 --chmod=644 --link --parents --exclude=*.md --exclude=x a b /dst/',
      ),
    ).toMatchObject({
      kind: 'copy',
      from: 'build',
      chown: '1:2',
      chmod: '644',
      link: true,
      parents: true,
      excludePatterns: ['*.md', 'x'],
      sourcePaths: ['a', 'b'],
      destPath: '/dst/',
    });
    expect(
      commandOf('ADD --keep-git-dir --checksum=sha256:abc --unpack=false https://x/y.tar /z'),
    ).toMatchObject({
      kind: 'add',
      keepGitDir: true,
      checksum: 'sha256:abc',
      unpack: false,
      sourcePaths: ['https://x/y.tar'],
    });
    expect(commandOf('ADD a b')).toMatchObject({
      keepGitDir: undefined,
      unpack: undefined,
      link: false,
    });
    const c = stagesOf('FROM x\nCOPY <<-EOF <<"RAW" /dst/\n\thello $X\nEOF\nraw $Y\nRAW\n')[0]!
      .commands[0]!;
    expect(c).toMatchObject({
      sourcePaths: [],
      sourceContents: [
        { path: 'EOF', data: 'hello $X\n', expand: true },
        { path: 'RAW', data: 'raw $Y\n', expand: false },
      ],
    });
  });

  it('CMD, ENTRYPOINT, SHELL', () => {
    expect(commandOf('CMD ["a", "b"]')).toMatchObject({
      kind: 'cmd',
      cmdLine: ['a', 'b'],
      prependShell: false,
    });
    expect(commandOf('CMD a b')).toMatchObject({
      kind: 'cmd',
      cmdLine: ['a b'],
      prependShell: true,
    });
    expect(commandOf('ENTRYPOINT []')).toMatchObject({
      kind: 'entrypoint',
      cmdLine: [],
      prependShell: false,
    });
    expect(commandOf('SHELL ["/bin/bash", "-c"]')).toMatchObject({
      kind: 'shell',
      shell: ['/bin/bash', '-c'],
    });
  });

  it('HEALTHCHECK: flags in nanoseconds, CMD-SHELL for the shell form, NONE', () => {
    expect(
      commandOf(
        'HEALTHCHECK --interval=5m --timeout=3s --start-period=1m30s --start-interval=500ms --retries=3 CMD curl -f http://x/',
      ),
    ).toMatchObject({
      health: {
        test: ['CMD-SHELL', 'curl -f http://x/'],
        interval: 300e9,
        timeout: 3e9,
        startPeriod: 90e9,
        startInterval: 500e6,
        retries: 3,
      },
    });
    expect(commandOf('HEALTHCHECK CMD ["true"]')).toMatchObject({
      health: { test: ['CMD', 'true'], interval: 0, retries: 0 },
    });
    expect(commandOf('HEALTHCHECK none')).toMatchObject({ health: { test: ['NONE'] } });
  });

  it('ONBUILD keeps the trigger text, heredocs included', () => {
    expect(commandOf('ONBUILD RUN echo hi')).toMatchObject({
      kind: 'onbuild',
      expression: 'RUN echo hi',
    });
    const c = stagesOf('FROM x\nonbuild run <<EOF\necho a\nEOF\n')[0]!.commands[0]!;
    expect(c).toMatchObject({ kind: 'onbuild', expression: 'run <<EOF\necho a\nEOF' });
  });

  it('the others', () => {
    expect(commandOf('EXPOSE 80/udp 443 80')).toMatchObject({
      kind: 'expose',
      ports: ['443', '80', '80/udp'],
    });
    expect(commandOf('VOLUME ["/a", "/b"]')).toMatchObject({
      kind: 'volume',
      volumes: ['/a', '/b'],
    });
    expect(commandOf('VOLUME /a /b')).toMatchObject({ kind: 'volume', volumes: ['/a', '/b'] });
    expect(commandOf('USER app:app')).toMatchObject({ kind: 'user', user: 'app:app' });
    expect(commandOf('WORKDIR /w')).toMatchObject({ kind: 'workdir', path: '/w' });
    expect(commandOf('STOPSIGNAL SIGKILL')).toMatchObject({
      kind: 'stopsignal',
      signal: 'SIGKILL',
    });
    expect(commandOf('MAINTAINER me')).toMatchObject({ kind: 'maintainer', maintainer: 'me' });
    expect(commandOf('ARG a=1 b c=')).toMatchObject({
      kind: 'arg',
      args: [
        { key: 'a', value: '1' },
        { key: 'b', value: undefined },
        { key: 'c', value: '' },
      ],
    });
  });
});

describe('RUN --mount (commands_runmount.go)', () => {
  const ex = (w: string): string => w.replace('$T', 'cache');

  it('defaults: bind, read-only for bind/secret/ssh, writable for cache/tmpfs', () => {
    expect(parseMount('target=/x', ex)).toMatchObject({
      type: 'bind',
      target: '/x',
      readOnly: true,
    });
    expect(parseMount('type=cache,target=/x', ex)).toMatchObject({
      type: 'cache',
      readOnly: false,
    });
    expect(parseMount('type=tmpfs,target=/x,size=64m', ex)).toMatchObject({
      type: 'tmpfs',
      readOnly: false,
      sizeLimit: 64 * 1024 * 1024,
    });
    expect(parseMount('type=secret,id=s', ex)).toMatchObject({
      type: 'secret',
      cacheId: 's',
      readOnly: true,
      required: false,
    });
  });

  it('every key and alias', () => {
    expect(
      parseMount(
        'type=$T,id=c,target=/a,from=stage,source=/src,sharing=locked,mode=0700,uid=1000,gid=1001,rw',
        ex,
      ),
    ).toMatchObject({
      type: 'cache',
      cacheId: 'c',
      target: '/a',
      from: 'stage',
      source: '/src',
      cacheSharing: 'locked',
      mode: 0o700,
      uid: 1000,
      gid: 1001,
      readOnly: false,
    });
    expect(parseMount('type=bind,src=a,dst=/b,readwrite=true', ex)).toMatchObject({
      source: 'a',
      target: '/b',
      readOnly: false,
    });
    expect(parseMount('type=bind,destination=/b,ro=true', ex)).toMatchObject({
      target: '/b',
      readOnly: true,
    });
    expect(parseMount('type=secret,id=s,env=TOKEN,required', ex)).toMatchObject({
      env: 'TOKEN',
      required: true,
    });
    expect(
      parseMount('type=ssh,id=default,target=/sock,required=true,mode=0600', ex),
    ).toMatchObject({ type: 'ssh', required: true, mode: 0o600 });
    expect(parseMount('type=bind,"target=/a,b"', ex)).toMatchObject({ target: '/a,b' });
  });

  it.each([
    ['type=foo', 'unsupported mount type "foo"'],
    ['type=cahce', 'unsupported mount type "cahce" (did you mean cache?)'],
    ['type=cache,sharing=nope', 'unsupported sharing value "nope"'],
    ['type=bind,mode=0700', 'mode not allowed for "bind" type mounts'],
    ['type=tmpfs,uid=1', 'uid not allowed for "tmpfs" type mounts'],
    ['type=bind,gid=1', 'gid not allowed for "bind" type mounts'],
    ['type=bind,required', "unexpected key 'required' for mount type 'bind'"],
    ['type=cache,size=1', "unexpected key 'size' for mount type 'cache'"],
    ['type=secret,from=x,id=a', 'secret mount should not have a from'],
    ['type=secret,sharing=shared,id=a', 'secret mount should not define sharing'],
    ['type=secret', 'invalid secret mount. one of source, target required'],
    ['type=secret,source=a,id=b', "both source and id can't be set"],
    ['type=bind,sharing=shared', 'invalid cache sharing set for bind mount'],
    ['type=cache,mode=999', 'invalid value 999 for mode'],
    ['type=cache,uid=x', 'invalid value x for uid'],
    ['type=bind,ro=maybe', 'invalid value for ro: maybe'],
    ['type=bind,foo=bar', "unexpected key 'foo' in 'foo=bar'"],
    ['type=bind,target', "invalid field 'target' must be a key=value pair"],
    ['type=tmpfs,size=lots', 'invalid value for size: lots'],
    ['a"b', 'failed to parse csv mounts: bare " in non-quoted-field'],
  ])('rejects %s', (value, msg) => {
    expect(() => parseMount(value, ex)).toThrow(msg);
  });

  it('without an expander only `from` is checked (the rest waits for expansion)', () => {
    expect(parseMount('type=$T,target=$DIR,from=base')).toMatchObject({
      type: 'bind',
      target: '',
      from: 'base',
    });
  });
});
