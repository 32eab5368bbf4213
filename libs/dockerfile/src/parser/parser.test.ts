import { describe, expect, it } from 'vitest';
import { DockerfileError } from '../dockerfile-error.js';
import { encodeUtf8 } from '../go/utf8.js';
import { parseWords } from './line-parsers.js';
import { dumpAst, formatWarnings, parse } from './parser.js';

function parseError(text: string | Uint8Array): DockerfileError {
  try {
    parse(text);
  } catch (err) {
    if (err instanceof DockerfileError) return err;
    throw err;
  }
  throw new Error('expected a DockerfileError');
}

describe('parseWords', () => {
  it.each([
    ['foo', ['foo']],
    ['foo bar', ['foo', 'bar']],
    ['foo\\ bar', ['foo\\ bar']],
    ['foo=bar', ['foo=bar']],
    ["foo bar 'abc xyz'", ['foo', 'bar', "'abc xyz'"]],
    ['foo bar "abc xyz"', ['foo', 'bar', '"abc xyz"']],
    ['àöû', ['àöû']],
    ['föo bàr "âbc xÿz"', ['föo', 'bàr', '"âbc xÿz"']],
  ])('%s', (input, expected) => {
    expect(parseWords(input, '\\')).toEqual(expected);
  });
});

describe('line numbers', () => {
  it('records start and end lines of every instruction', () => {
    const text = [
      '# comment', // 1
      '', // 2
      'FROM busybox', // 3
      'RUN a \\', // 4
      '  # inner comment', // 5
      '', // 6
      '  b', // 7
      '', // 8
      'CMD ["x"]', // 9
    ].join('\n');
    const { ast } = parse(text);
    expect(ast.children.map((c) => [c.value, c.startLine, c.endLine])).toEqual([
      ['FROM', 3, 3],
      ['RUN', 4, 7],
      ['CMD', 9, 9],
    ]);
    expect([ast.startLine, ast.endLine]).toEqual([3, 9]);
    expect(ast.children[1]?.location()).toEqual([
      { start: 4, end: 4 },
      { start: 5, end: 5 },
      { start: 6, end: 6 },
      { start: 7, end: 7 },
    ]);
  });

  it('counts CRLF lines like LF lines', () => {
    const { ast } = parse('FROM a\r\nRUN b \\\r\n  c\r\n');
    expect(ast.dump()).toBe('(from "a")\n(run "b   c")');
    expect(ast.children[1]?.endLine).toBe(3);
  });
});

describe('warnings', () => {
  it('warns on empty continuation lines', () => {
    const text = `
FROM alpine:3.6

RUN valid \\
    continuation

RUN something \\

    following \\

    more

RUN another \\

    thing

RUN non-indented \\
# this is a comment
   after-comment

RUN indented \\
    # this is an indented comment
    comment
\t`;
    const { warnings } = parse(text);
    expect(warnings).toHaveLength(2);
    expect(warnings[0]?.short).toContain('Empty continuation line found in');
    expect(warnings[0]?.short).toContain('RUN something     following     more');
    expect(warnings[1]?.short).toContain('RUN another     thing');
    expect(warnings[0]?.detail[0]).toContain('will become errors in a future release');
    expect(warnings[0]?.location).toEqual({ start: 11, end: 11 });
  });
});

describe('directives', () => {
  it('reads syntax, escape and check at the top', () => {
    const r = parse(
      '# syntax=docker/dockerfile:1\n# escape=`\n#check=skip=all\nFROM a\nRUN b `\n  c\n',
    );
    expect(r.escapeToken).toBe('`');
    expect(r.directives).toEqual([
      { name: 'syntax', value: 'docker/dockerfile:1', line: 1 },
      { name: 'escape', value: '`', line: 2 },
      { name: 'check', value: 'skip=all', line: 3 },
    ]);
    expect(r.ast.dump()).toBe('(from "a")\n(run "b   c")');
    // Directives are not comments of the first instruction.
    expect(r.ast.children[0]?.prevComment).toEqual([]);
  });

  it('ignores directives after an instruction or another comment', () => {
    expect(parse('FROM a\n# escape=`\nRUN b \\\nc\n').escapeToken).toBe('\\');
    expect(parse('# hello\n# escape=`\nFROM a\n').escapeToken).toBe('\\');
    expect(parse('# unknown=1\n# escape=`\nFROM a\n').escapeToken).toBe('\\');
  });

  it('rejects a repeated directive, at the line before it as BuildKit', () => {
    const err = parseError('# escape=\\\n# escape=`\nFROM a\n');
    expect(err.message).toBe('only one escape parser directive can be used');
    expect([err.startLine, err.endLine]).toEqual([1, 1]);
  });

  it('rejects an invalid escape token', () => {
    const err = parseError('# escape=x\nFROM a\n');
    expect(err.message).toBe("invalid escape token 'x' does not match ` or \\");
    expect(err.startLine).toBe(0);
  });

  it('keeps the comments before an instruction', () => {
    const { ast } = parse('# syntax=x\n# first\n#\n# second\n#  third  \nFROM a\n');
    expect(ast.children[0]?.prevComment).toEqual(['second', 'third']);
  });
});

describe('instructions', () => {
  it('parses every instruction form', () => {
    const text = [
      'FROM --platform=$BUILDPLATFORM golang:1.22 AS build',
      'ARG A B=1 C="x y"',
      'ENV K v w',
      'LABEL a=b "c d"=e',
      'EXPOSE 80/tcp 443',
      'VOLUME ["/a", "/b"]',
      'VOLUME /c /d',
      'WORKDIR /src dir',
      'USER me:group',
      'STOPSIGNAL SIGTERM',
      'MAINTAINER someone <a@b>',
      'SHELL ["/bin/sh", "-c"]',
      'ENTRYPOINT exec me',
      'HEALTHCHECK NONE',
      'ONBUILD RUN --mount=type=cache,target=/x make',
      'copy --from=build --chmod=755 /out /bin/',
      'NOTANINSTRUCTION foo bar',
    ].join('\n');
    expect(dumpAst(text)).toBe(
      [
        '(from ["--platform=$BUILDPLATFORM"] "golang:1.22" "AS" "build")',
        '(arg "A" "B=1" "C=\\"x y\\"")',
        '(env "K" "v w" "")',
        '(label "a" "b" "=" "\\"c d\\"" "e" "=")',
        '(expose "80/tcp" "443")',
        '(volume "/a" "/b")',
        '(volume "/c" "/d")',
        '(workdir "/src dir")',
        '(user "me:group")',
        '(stopsignal "SIGTERM")',
        '(maintainer "someone <a@b>")',
        '(shell "/bin/sh" "-c")',
        '(entrypoint "exec me")',
        '(healthcheck "NONE")',
        '(onbuild (run ["--mount=type=cache,target=/x"] "make"))',
        '(copy ["--from=build" "--chmod=755"] "/out" "/bin/")',
        '(notaninstruction "")',
      ].join('\n'),
    );
  });

  it('keeps the keyword as written, the original line and the json attribute', () => {
    const { ast } = parse('run ["a"]\nRun b \\\n c\n');
    const [first, second] = ast.children;
    expect(first?.value).toBe('run');
    expect(first?.attributes).toEqual({ json: true });
    expect(second?.original).toBe('Run b  c');
    expect(second?.attributes).toEqual({});
  });

  it('quotes like Go strconv.Quote in the dump', () => {
    expect(dumpAst('RUN a\u0001b\u00a0c\u00e9\u{1f600}\u200b\x7f\n')).toBe(
      '(run "a\\x01b\\u00a0cé😀\\u200b\\x7f")',
    );
  });

  it('keeps invalid UTF-8 bytes and prints them as \\x escapes', () => {
    const bytes = Uint8Array.from([...encodeUtf8('RUN a'), 0xff, 0x62, 0x0a]);
    expect(dumpAst(bytes)).toBe('(run "a\\xffb")');
  });

  it('strips a UTF-8 BOM on the first line only', () => {
    expect(dumpAst('\ufeffFROM a\n')).toBe('(from "a")');
    expect(dumpAst(Uint8Array.from([0xef, 0xbb, 0xbf, ...encodeUtf8('FROM a\n')]))).toBe(
      '(from "a")',
    );
  });

  it('reports errors of the line parsers with their lines', () => {
    const env = parseError('FROM a\n\nENV \\\n  PATH\n');
    expect(env.message).toBe('ENV must have two arguments');
    expect([env.startLine, env.endLine]).toEqual([3, 4]);
    const label = parseError('FROM a\nLABEL a=b c\n');
    expect(label.message).toBe(
      'Syntax error - can\'t find = in "c". Must be of the form: name=value',
    );
    const json = parseError('FROM a\nCMD ["a", 1]\n');
    expect(json.message).toBe(
      'when using JSON array syntax, arrays must be comprised of strings only',
    );
    expect(json.startLine).toBe(2);
  });

  it('rejects a file without instructions', () => {
    expect(parseError('').message).toBe('file with no instructions');
    expect(parseError('# only\n\n   \n').message).toBe('file with no instructions');
  });

  it('rejects a line over 64 KiB like bufio.Scanner', () => {
    const label = 'a'.repeat(64 * 1024);
    const err = parseError(`\n\t\tFROM image\n\t\tLABEL test=${label}\n`);
    expect(err.message).toBe('dockerfile line greater than max allowed size of 65535');
    // The longest line that fits: 65535 bytes.
    const fits = 'RUN ' + 'b'.repeat(65535 - 4);
    expect(parse(`FROM a\n${fits}\n`).ast.children).toHaveLength(2);
    expect(parse(`FROM a\n${fits}`).ast.children).toHaveLength(2);
    expect(() => parse(`FROM a\n${fits}b`)).toThrow(DockerfileError);
  });

  it('extracts flags like BuildKit, stopping at -- and the first argument', () => {
    expect(dumpAst('COPY --a="x y" --b \'q\' -- --c d\n')).toBe(
      '(copy ["--a=x y" "--b"] "\'q\'" "--" "--c" "d")',
    );
    expect(dumpAst('RUN --x=\\"y\\" z\n')).toBe('(run ["--x=\\"y\\""] "z")');
  });
});

describe('JSON form edge cases, as Go encoding/json', () => {
  it('falls back to the shell form when a number overflows float64', () => {
    expect(dumpAst('CMD ["a", 1e999]\n')).toBe('(cmd "[\\"a\\", 1e999]")');
  });

  it('rejects other non-string elements', () => {
    expect(parseError('CMD ["a", 1e9]\n').message).toContain(
      'arrays must be comprised of strings only',
    );
  });

  it('falls back to the shell form beyond 10000 nested arrays', () => {
    const deep = '['.repeat(10001) + ']'.repeat(10001);
    expect(dumpAst(`CMD ${deep}\n`)).toBe(`(cmd "${deep}")`);
    const ok = '['.repeat(10000) + ']'.repeat(10000);
    expect(() => parse(`CMD ${ok}\n`)).toThrow('arrays must be comprised of strings only');
  });

  it('replaces lone surrogate escapes with U+FFFD', () => {
    expect(dumpAst('CMD ["\\ud800x"]\n')).toBe('(cmd "\ufffdx")');
  });
});

describe('formatWarnings', () => {
  it('prints like PrintWarnings', () => {
    expect(formatWarnings([])).toBe('');
    const { warnings } = parse('FROM a\nRUN b \\\n\n c\n');
    expect(formatWarnings(warnings)).toBe(
      '[WARNING]: Empty continuation line found in: RUN b  c\n' +
        '[WARNING]: Empty continuation lines will become errors in a future release.\n',
    );
  });
});
