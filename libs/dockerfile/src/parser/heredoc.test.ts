import { describe, expect, it } from 'vitest';
import { DockerfileError } from '../dockerfile-error.js';
import { chompHeredocContent, heredocsFromLine, parseHeredoc } from './heredoc.js';
import type { Heredoc } from './node.js';
import { parse } from './parser.js';

// Ported from BuildKit's parser_heredoc_test.go.

const dockerfile = [
  '',
  'FROM alpine:3.6',
  '',
  'ENV NAME=me',
  '',
  'RUN ls',
  '',
  'USER <<INVALID',
  'INVALID',
  '',
  'RUN <<EMPTY',
  'EMPTY',
  '',
  'RUN 3<<EMPTY2',
  'EMPTY2',
  '',
  'RUN "<<NOHEREDOC"',
  '',
  'RUN <<INDENT',
  '\tfoo',
  '\tbar',
  'INDENT',
  '',
  'RUN <<-UNINDENT',
  '\tbaz',
  '\tquux',
  'UNINDENT',
  '',
  'RUN <<-UNINDENT2',
  '\tbaz',
  '\tquux',
  '\tUNINDENT2',
  '',
  'RUN <<-EXPAND',
  '\texpand $NAME',
  'EXPAND',
  '',
  "RUN <<-'NOEXPAND'",
  "\tdon't expand $NAME",
  'NOEXPAND',
  '',
  'RUN <<COPY',
  'echo hello world',
  'echo foo bar',
  'COPY',
  '',
  'RUN <<COMMENT',
  '# internal comment',
  'echo hello world',
  'echo foo bar # trailing comment',
  'COMMENT',
  '',
  'RUN --mount=type=cache,target=/foo <<MOUNT',
  'echo hello',
  'MOUNT',
  '',
  'COPY <<FILE1 <<FILE2 /dest',
  'content 1',
  'FILE1',
  'content 2',
  'FILE2',
  '',
  'COPY <<EOF /quotes',
  '"foo"',
  "'bar'",
  'EOF',
  '',
  'COPY <<X <<Y /dest',
  'Y',
  'X',
  'X',
  'Y',
  '',
  'RUN <<COMPLEX python3',
  "print('hello world')",
  'COMPLEX',
  '',
  'COPY <<file.txt /dest',
  'hello world',
  'file.txt',
  '',
  "RUN <<eo'f'",
  'echo foo',
  'eof',
  '',
  "RUN <<eo\\'f",
  'echo foo',
  "eo'f",
  '',
  "RUN <<'e'o\\'f",
  'echo foo',
  "eo'f",
  '',
  "RUN <<'one two'",
  'echo bar',
  'one two',
  '',
  'RUN <<$EOF',
  '$EOF',
  '',
  'RUN <<  EOF',
  'EOF',
  '',
  'RUN <<  EOF  > foo',
  'EOF',
  '\t',
].join('\n');

const h = (name: string, content: string, extra: Partial<Heredoc> = {}): Heredoc => ({
  name,
  fileDescriptor: 0,
  expand: true,
  chomp: false,
  content,
  ...extra,
});

const expected: (Heredoc[] | undefined)[] = [
  undefined, // ENV NAME=me
  undefined, // RUN ls
  undefined, // USER <<INVALID
  undefined, // INVALID
  [h('EMPTY', '')],
  [h('EMPTY2', '', { fileDescriptor: 3 })],
  undefined, // RUN "<<NOHEREDOC"
  [h('INDENT', '\tfoo\n\tbar\n')],
  [h('UNINDENT', '\tbaz\n\tquux\n', { chomp: true })],
  [h('UNINDENT2', '\tbaz\n\tquux\n', { chomp: true })],
  [h('EXPAND', '\texpand $NAME\n', { chomp: true })],
  [h('NOEXPAND', "\tdon't expand $NAME\n", { chomp: true, expand: false })],
  [h('COPY', 'echo hello world\necho foo bar\n')],
  [h('COMMENT', '# internal comment\necho hello world\necho foo bar # trailing comment\n')],
  [h('MOUNT', 'echo hello\n')],
  [h('FILE1', 'content 1\n'), h('FILE2', 'content 2\n')],
  [h('EOF', '"foo"\n\'bar\'\n')],
  [h('X', 'Y\n'), h('Y', 'X\n')],
  [h('COMPLEX', "print('hello world')\n")],
  [h('file.txt', 'hello world\n')],
  [h('eof', 'echo foo\n', { expand: false })],
  [h("eo'f", 'echo foo\n')],
  [h("eo'f", 'echo foo\n', { expand: false })],
  [h('one two', 'echo bar\n', { expand: false })],
  [h('$EOF', '')],
  [h('EOF', '')],
  [h('EOF', '')],
];

describe('heredocs in Parse', () => {
  it('extracts every heredoc', () => {
    const { ast } = parse(dockerfile);
    expected.forEach((want, i) => {
      const child = ast.children[i + 1];
      expect(child, `child ${i + 1}`).toBeDefined();
      expect(child?.heredocs, `child ${i + 1}: ${child?.original}`).toEqual(want ?? []);
    });
  });

  it('counts heredoc bodies in the line range', () => {
    const { ast } = parse('FROM a\nRUN <<EOF\nx\ny\nEOF\nRUN b\n');
    expect(ast.children.map((c) => [c.startLine, c.endLine])).toEqual([
      [1, 1],
      [2, 5],
      [6, 6],
    ]);
  });

  it('ignores heredocs in the JSON form', () => {
    const { ast } = parse(
      '\nFROM alpine:3.6\n\nRUN ["whoami"]\nRUN ["<<EOF"]\nRUN ["<<\'EOF\'"]\n\t',
    );
    for (let i = 1; i <= 3; i++) expect(ast.children[i]?.heredocs).toEqual([]);
  });

  it('finds heredocs in ONBUILD', () => {
    const { ast } = parse('FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\n');
    expect(ast.children[1]?.heredocs).toEqual([h('EOF', 'echo hi\n')]);
  });

  it('fails on an unterminated heredoc with its lines', () => {
    let err: unknown;
    try {
      parse('FROM a\nRUN <<EOF\necho hi\n');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DockerfileError);
    expect((err as DockerfileError).message).toBe('unterminated heredoc');
    expect([(err as DockerfileError).startLine, (err as DockerfileError).endLine]).toEqual([2, 3]);
  });

  it('finds no heredoc in a line the lexer rejects, as BuildKit', () => {
    // The unterminated quote fails the line's lexing; BuildKit then sees no heredoc at all.
    const { ast } = parse("FROM a\nRUN <<'EOF\nEOF\n");
    expect(ast.children.map((c) => c.heredocs.length)).toEqual([0, 0, 0]);
  });
});

describe('heredoc helpers', () => {
  it('chomps leading tabs', () => {
    expect(chompHeredocContent('\thello\n\tworld\n')).toBe('hello\nworld\n');
    expect(chompHeredocContent('a\r\tb\n\t\tc')).toBe('a\r\tb\nc');
  });

  it.each([
    '<<EOF',
    "<<'EOF'",
    '<<"EOF"',
    '<<-EOF',
    "<<-'EOF'",
    '<<-"EOF"',
    '<<EO"F"',
    '<< EOF',
    '<<- EOF',
  ])('parses %s', (src) => {
    expect(parseHeredoc(src)?.name).toBe('EOF');
  });

  it.each(["<<'EOF", '<<"EOF', "<<EOF'", '<<EOF"'])('rejects %s', (src) => {
    expect(() => parseHeredoc(src)).toThrow();
  });

  it.each(['', 'EOF', '<<', '<<-', '<EOF', '<<<EOF', '<<EOF sh'])('is not a heredoc: %s', (src) => {
    expect(parseHeredoc(src)).toBeUndefined();
  });

  it.each([
    ['RUN <<EOF', ['EOF']],
    ['RUN <<-EOF', ['EOF']],
    // Upstream lists EOF here but only checks the heredocs found: the lexer keeps blanks after
    // `<<`, not after `<<-`, so `<<-` and `EOF` are two words and there is no heredoc.
    ['RUN <<- EOF', []],
    ['RUN << -EOF', ['-EOF']],
    ["RUN <<'EOF'", ['EOF']],
    ['RUN 4<<EOF', ['EOF']],
    ['RUN <<EOF <<EOF2', ['EOF', 'EOF2']],
    ["RUN '<<EOF'", []],
    ['RUN "<<EOF"', []],
  ])('heredocsFromLine(%s)', (line, names) => {
    expect(heredocsFromLine(line).map((d) => d.name)).toEqual(names);
  });
});
