import { describe, expect, it } from 'vitest';
import { envFromList, emptyEnv } from './env.js';
import { ShellLex } from './lex.js';
import { convertShellPatternToRegex, reversePattern, reverseString } from './pattern.js';
import { ShellExpansionError } from './shell-error.js';

// Ported from BuildKit's lex_test.go, plus Kiln's own edge cases.

describe('convertShellPatternToRegex', () => {
  it.each([
    ['*', '^[^\\n]*'],
    ['?', '^[^\\n]'],
    [String.raw`\*`, String.raw`^\*`],
    [String.raw`(()[]{\}^$.\*\?|\\`, String.raw`^\(\(\)\[\]\{\}\^\$\.\*\?\|\\`],
  ])('%s', (pattern, source) => {
    expect(convertShellPatternToRegex(pattern, true, true).source).toBe(source);
  });

  it.each(['\\', '\\x', '\\\\\\'])('rejects %s', (pattern) => {
    expect(() => convertShellPatternToRegex(pattern, true, true)).toThrow(/invalid escape/);
  });
});

describe('reverse helpers', () => {
  it('reverses strings by rune', () => {
    expect(reverseString('54321')).toBe('12345');
    expect(reverseString('🖖🚀👽')).toBe('👽🚀🖖');
  });

  it.each([
    [String.raw`a\*c`, String.raw`c\*a`],
    [String.raw`\\\ab`, String.raw`b\a\\`],
    ['ab\\', '\\ba'],
    ['👽\\🚀🖖', '🖖\\🚀👽'],
    [String.raw`\\b`, String.raw`b\\`],
  ])('reversePattern(%s)', (pattern, expected) => {
    expect(reversePattern(pattern)).toBe(expected);
  });
});

describe('mandatory variables', () => {
  const lex = new ShellLex('\\');
  const setEnvs = ['VAR=plain', 'ARG=x'];
  const emptyEnvs = ['VAR=', 'ARG=x'];
  const unsetEnvs = ['ARG=x'];
  const noEmpty = '${VAR:?message here$ARG}';
  const noUnset = '${VAR?message here$ARG}';

  it('${VAR:?} rejects empty and unset', () => {
    expect(lex.processWord(noEmpty, setEnvs)).toBe('plain');
    expect(() => lex.processWord(noEmpty, emptyEnvs)).toThrow('message herex');
    expect(() => lex.processWord(noEmpty, unsetEnvs)).toThrow('message herex');
  });

  it('${VAR?} rejects only unset', () => {
    expect(lex.processWord(noUnset, setEnvs)).toBe('plain');
    expect(lex.processWord(noUnset, emptyEnvs)).toBe('');
    expect(() => lex.processWord(noUnset, unsetEnvs)).toThrow('message herex');
  });

  it('uses the default messages', () => {
    expect(() => lex.processWord('${X:?}', { X: '' })).toThrow('X: is not allowed to be empty');
    expect(() => lex.processWord('${X?}', {})).toThrow('X: is not allowed to be unset');
  });
});

describe('environment lookup', () => {
  const get = (env: string[], k: string): string => new ShellLex().processWord('$' + k, env);

  it('follows BuildEnvs', () => {
    expect(get([], 'foo')).toBe('');
    expect(get(['foo'], 'foo')).toBe('');
    expect(get(['foo='], 'foo')).toBe('');
    expect(get(['foo=bar'], 'foo')).toBe('bar');
    expect(get(['foo=bar', 'car=hat'], 'car')).toBe('hat');
    // The last one wins.
    expect(get(['foo=bar', 'car=hat', 'car=bike'], 'car')).toBe('bike');
  });

  it('is case-sensitive', () => {
    expect(get(['FOO=1'], 'foo')).toBe('');
  });
});

interface MatchCase {
  input: string;
  envs: Record<string, string>;
  expected?: string;
  expectedErr?: boolean;
  matches?: string[];
  unmatched?: string[];
}

const matchCases: MatchCase[] = [
  { input: 'x', envs: { DUMMY: 'dummy' }, expected: 'x' },
  { input: 'x ${UNUSED}', envs: { DUMMY: 'dummy' }, expected: 'x ', unmatched: ['UNUSED'] },
  { input: 'x ${FOO}', envs: { FOO: 'y' }, expected: 'x y', matches: ['FOO'] },
  {
    input: '${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}',
    envs: { FOO: 'xxx', BAR: '' },
    expected: 'xxx  ccc',
    matches: ['FOO', 'BAR'],
    unmatched: ['BAZ'],
  },
  {
    input: '${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}',
    envs: { FOO: 'xxx', BAR: '' },
    expected: 'xxx bbb ccc',
    matches: ['FOO', 'BAR'],
    unmatched: ['BAZ'],
  },
  { input: '${FOO:-}', envs: { FOO: 'xxx', BAR: '' }, expected: 'xxx', matches: ['FOO'] },
  { input: '${FOO:-}', envs: {}, expected: '', unmatched: ['FOO'] },
  {
    input: '${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}',
    envs: { FOO: 'xxx', BAR: '' },
    expected: 'aaa bbb ',
    matches: ['FOO', 'BAR'],
    unmatched: ['BAZ'],
  },
  {
    input: '${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}',
    envs: { FOO: 'xxx', BAR: '' },
    expected: 'aaa  ',
    matches: ['FOO', 'BAR'],
    unmatched: ['BAZ'],
  },
  { input: '${FOO?aaa}', envs: { FOO: 'xxx', BAR: '' }, expected: 'xxx', matches: ['FOO'] },
  { input: '${BAR?bbb}', envs: { FOO: 'xxx', BAR: '' }, expected: '', matches: ['BAR'] },
  { input: '${BAZ?ccc}', envs: { FOO: 'xxx', BAR: '' }, expectedErr: true },
  { input: '${FOO:?aaa}', envs: { FOO: 'xxx', BAR: '' }, expected: 'xxx', matches: ['FOO'] },
  { input: '${BAR:?bbb}', envs: { FOO: 'xxx', BAR: '' }, expectedErr: true },
  { input: '${BAZ:?ccc}', envs: { FOO: 'xxx', BAR: '' }, expectedErr: true },
  { input: '${BAZ:?}', envs: { FOO: 'xxx', BAR: '' }, expectedErr: true },
  { input: '${FOO=aaa}', envs: { FOO: 'xxx', BAR: '' }, expectedErr: true },
  { input: '${FOO=:aaa}', envs: { FOO: 'xxx', BAR: '' }, expectedErr: true },
  { input: '${FOO=}', envs: {}, expectedErr: true },
  {
    // Regexp metacharacters are literal; } must be escaped not to close the ${}.
    input: '${FOO#()[]{\\}^$.\\*\\?|\\\\}',
    envs: { FOO: String.raw`()[]{}^$.*?|\x` },
    expected: 'x',
    matches: ['FOO'],
  },
  { input: '${FOO%%\\**}', envs: { FOO: 'xx**' }, expected: 'xx', matches: ['FOO'] },
  { input: '${FOO#*x*y}', envs: { FOO: 'xxyy' }, expected: 'y', matches: ['FOO'] },
  { input: '${FOO#*}', envs: { FOO: 'xxyy' }, expected: 'xxyy', matches: ['FOO'] },
  {
    input: '${FOO#$BAR}',
    envs: { FOO: 'xxyy', BAR: 'x' },
    expected: 'xyy',
    matches: ['FOO', 'BAR'],
  },
  {
    input: '${FOO#$BAR}',
    envs: { FOO: 'xxyy', BAR: '' },
    expected: 'xxyy',
    matches: ['FOO', 'BAR'],
  },
  { input: '${FOO#}', envs: { FOO: 'xxyy' }, expected: 'xxyy', matches: ['FOO'] },
  { input: '${FOO##*x}', envs: { FOO: 'xxyy' }, expected: 'yy', matches: ['FOO'] },
  { input: '${FOO##}', envs: { FOO: 'xxyy' }, expected: 'xxyy', matches: ['FOO'] },
  { input: '${FOO#?\\?}', envs: { FOO: '???y' }, expected: '?y', matches: ['FOO'] },
  {
    input: '${ABC:-.}${FOO%x}${ABC:-.}',
    envs: { FOO: 'xxyy' },
    expected: '.xxyy.',
    matches: ['FOO'],
    unmatched: ['ABC'],
  },
  { input: '${FOO%%\\**\\*}', envs: { FOO: 'a***yy*' }, expected: 'a', matches: ['FOO'] },
  { input: '${FOO%}', envs: { FOO: 'xxyy' }, expected: 'xxyy', matches: ['FOO'] },
  {
    input: '${FOO%%$BAR}',
    envs: { FOO: 'xxyy', BAR: '' },
    expected: 'xxyy',
    matches: ['FOO', 'BAR'],
  },
  {
    input: '${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}',
    envs: { FOO: '/foo*/*/*.txt', NEEDLE: '\\*/' },
    expected: '/foo.*/*.txt - /foo..*.txt',
    matches: ['FOO', 'NEEDLE'],
  },
  {
    input: '${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}',
    envs: { FOO: '/tmp/tmp/bar.txt', NEEDLE: '/tmp' },
    expected: '/tmp/bar.txt - /bar.txt',
    matches: ['FOO', 'NEEDLE'],
  },
  {
    input: '${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}',
    envs: { FOO: '/a/foo/b/c.txt', NEEDLE: '/?/', REPLACEMENT: '/' },
    expected: '/foo/b/c.txt - /foo/c.txt',
    matches: ['FOO', 'NEEDLE', 'REPLACEMENT'],
  },
  {
    input: '${FOO/$NEEDLE/$REPLACEMENT}',
    envs: { FOO: 'http://google.de', NEEDLE: 'http://', REPLACEMENT: 'https://' },
    expected: 'https://google.de',
    matches: ['FOO', 'NEEDLE', 'REPLACEMENT'],
  },
  {
    input: '${FOO//\\//\\/}',
    envs: { FOO: '/tmp/foo.txt' },
    expected: String.raw`\/tmp\/foo.txt`,
    matches: ['FOO'],
  },
  {
    input: '${FOO/$BAR/ww}',
    envs: { FOO: 'xxyy', BAR: '' },
    expected: 'wwxxyy',
    matches: ['FOO', 'BAR'],
  },
  { input: '${FOO//ww}', envs: { FOO: 'xxyy' }, expectedErr: true },
  { input: '${FOO//}', envs: { FOO: 'xxyy' }, expectedErr: true },
  { input: '${FOO///}', envs: { FOO: 'xxyy' }, expected: 'xxyy', matches: ['FOO'] },
  { input: '${FOO///}', envs: {}, expected: '', unmatched: ['FOO'] },
  // BuildKit rejects `:` with the trimming modifiers.
  { input: '${FOO:#x}', envs: { FOO: 'xx' }, expectedErr: true },
  { input: '${FOO:%x}', envs: { FOO: 'xx' }, expectedErr: true },
];

describe('processWordWithMatches', () => {
  const lex = new ShellLex('\\');
  it.each(matchCases)('$input', (c) => {
    if (c.expectedErr === true) {
      expect(() => lex.processWordWithMatches(c.input, c.envs)).toThrow(ShellExpansionError);
      return;
    }
    const r = lex.processWordWithMatches(c.input, c.envs);
    expect(r.result).toBe(c.expected);
    expect([...r.matched].sort()).toEqual([...(c.matches ?? [])].sort());
    expect([...r.unmatched].sort()).toEqual([...(c.unmatched ?? [])].sort());
  });

  it('expands a release file name', () => {
    const release =
      'something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz';
    const env = { VERSION: 'v1.2.3', TARGETOS: 'linux', TARGETARCH: 'arm', TARGETVARIANT: 'v7' };
    const r = lex.processWordWithMatches(release, env);
    expect(r.result).toBe('something-v1.2.3.linux-arm-v7.tar.gz');
    expect(r.unmatched.size).toBe(0);
    const r2 = lex.processWordWithMatches(release, {
      ...env,
      TARGETARCH: 'amd64',
      TARGETVARIANT: '',
    });
    expect(r2.result).toBe('something-v1.2.3.linux-amd64.tar.gz');
  });
});

describe('ShellLex options and edge cases', () => {
  it('wraps errors as BuildKit does', () => {
    const lex = new ShellLex();
    expect(() => lex.processWord('he${}xx', [])).toThrow(
      'failed to process "he${}xx": syntax error: bad substitution',
    );
    expect(() => lex.processWord('${aaa', [])).toThrow(/unsupported modifier/);
    expect(() => lex.processWord('${aaa:-bbb', [])).toThrow("syntax error: missing '}'");
    expect(() => lex.processWord("'abc", [])).toThrow('looking for matching single-quote');
    expect(() => lex.processWord('"abc', [])).toThrow('looking for matching double-quote');
    expect(() => lex.processWord('${x/abc', ['x=1'])).toThrow("syntax error: missing '/' in ${}");
    try {
      lex.processWord('${x:?boom}', []);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ShellExpansionError);
      expect((err as ShellExpansionError).code).toBe('DOCKERFILE_EXPANSION');
    }
  });

  it('uses the backtick escape token', () => {
    const lex = new ShellLex('`');
    expect(lex.processWord('a`$b', ['b=1'])).toBe('a$b');
    expect(lex.processWord('C:\\path', [])).toBe('C:\\path');
    expect(lex.processWord('"a`"b"', [])).toBe('a"b');
  });

  it('keeps quotes with rawQuotes and escapes with rawEscapes', () => {
    const lex = new ShellLex('\\', { rawQuotes: true });
    expect(lex.processWords(`a "b c" 'd'`, emptyEnv)).toEqual(['a', '"b c"', "'d'"]);
    const raw = new ShellLex('\\', { rawEscapes: true });
    expect(raw.processWord('a\\ b', [])).toBe('a\\ b');
    expect(raw.processWords('a\\ b', [])).toEqual(['a\\ b']);
  });

  it('leaves unset variables as written with skipUnsetEnv', () => {
    const lex = new ShellLex('\\', { skipUnsetEnv: true });
    expect(lex.processWord('$A ${B} ${C:-x} ${D/a/b} $E', ['E=e'])).toBe(
      '$A ${B} ${C:-x} ${D/a/b} e',
    );
    // Even an unsupported modifier survives when the variable is unset.
    expect(lex.processWord('${X:Y}', [])).toBe('${X:Y}');
  });

  it('treats quotes as text with skipProcessQuotes', () => {
    const lex = new ShellLex('\\', { skipProcessQuotes: true });
    expect(lex.processWord(`echo "$A" '$A'`, ['A=1'])).toBe(`echo "1" '1'`);
  });

  it('splits expanded values but not quoted ones', () => {
    const lex = new ShellLex();
    const env = envFromList(['X=a  b']);
    expect(lex.processWords('$X "$X"', env)).toEqual(['a', 'b', 'a  b']);
    expect(lex.processWords('"" x', env)).toEqual(['x']);
  });

  it('keeps a heredoc operator with its word', () => {
    const lex = new ShellLex('\\', { rawQuotes: true, rawEscapes: true, skipUnsetEnv: true });
    expect(lex.processWords('RUN <<  EOF  > foo', emptyEnv)).toEqual([
      'RUN',
      '<<  EOF',
      '>',
      'foo',
    ]);
    expect(lex.processWords('cat a<b', emptyEnv)).toEqual(['cat', 'a<b']);
  });

  it('handles special and positional parameters', () => {
    const lex = new ShellLex();
    expect(lex.processWord('$@x$#y$1z${10}', [])).toBe('xyz');
    expect(lex.processWord('${#}', ['#=n'])).toBe('n');
  });

  it('replaces with Go template rules in ${v//p/r}', () => {
    const lex = new ShellLex();
    // The replacement is a Go regexp template: \$0 keeps the escape and $0 is the match.
    expect(lex.processWord('${v//o/[\\$0]}', ['v=foo'])).toBe(String.raw`f[\o][\o]`);
    // An empty pattern matches between runes, once per position.
    expect(lex.processWord('${v//$e/-}', ['v=ab', 'e='])).toBe('-a-b-');
  });

  it('skips a leading BOM like text/scanner', () => {
    expect(new ShellLex().processWord('\ufeffabc', [])).toBe('abc');
  });
});
