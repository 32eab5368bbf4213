import { describe, expect, it } from 'vitest';
import { FsError } from '@kiln/layers';
import { goMatch, splitWildcards } from './match.js';
import { EMPTY_MATCH_INFO, PatternMatcher, matchesOrParentMatches } from './patterns.js';
import type { MatchInfo } from './patterns.js';

// Cases from moby/patternmatcher's patternmatcher_test.go (TestMatches and friends).
type Pass = 'fail' | 'exact' | 'inexact';
const cases: [string, string, Pass][] = [
  ['**', 'file', 'exact'],
  ['**', 'file/', 'exact'],
  ['**/', 'file', 'exact'],
  ['**/', 'file/', 'exact'],
  ['**', '/', 'exact'],
  ['**/', '/', 'exact'],
  ['**', 'dir/file', 'exact'],
  ['**/', 'dir/file', 'exact'],
  ['**', 'dir/file/', 'exact'],
  ['**/', 'dir/file/', 'exact'],
  ['**/**', 'dir/file', 'exact'],
  ['**/**', 'dir/file/', 'exact'],
  ['dir/**', 'dir/file', 'exact'],
  ['dir/**', 'dir/file/', 'exact'],
  ['dir/**', 'dir/dir2/file', 'exact'],
  ['dir/**', 'dir/dir2/file/', 'exact'],
  ['**/dir', 'dir', 'exact'],
  ['**/dir', 'dir/file', 'inexact'],
  ['**/dir2/*', 'dir/dir2/file', 'exact'],
  ['**/dir2/*', 'dir/dir2/file/', 'inexact'],
  ['**/dir2/**', 'dir/dir2/dir3/file', 'exact'],
  ['**/dir2/**', 'dir/dir2/dir3/file/', 'exact'],
  ['**file', 'file', 'exact'],
  ['**file', 'dir/file', 'exact'],
  ['**/file', 'dir/file', 'exact'],
  ['**file', 'dir/dir/file', 'exact'],
  ['**/file', 'dir/dir/file', 'exact'],
  ['**/file*', 'dir/dir/file', 'exact'],
  ['**/file*', 'dir/dir/file.txt', 'exact'],
  ['**/file*txt', 'dir/dir/file.txt', 'exact'],
  ['**/file*.txt', 'dir/dir/file.txt', 'exact'],
  ['**/file*.txt*', 'dir/dir/file.txt', 'exact'],
  ['**/**/*.txt', 'dir/dir/file.txt', 'exact'],
  ['**/**/*.txt2', 'dir/dir/file.txt', 'fail'],
  ['**/*.txt', 'file.txt', 'exact'],
  ['**/**/*.txt', 'file.txt', 'exact'],
  ['a**/*.txt', 'a/file.txt', 'exact'],
  ['a**/*.txt', 'a/dir/file.txt', 'exact'],
  ['a**/*.txt', 'a/dir/dir/file.txt', 'exact'],
  ['a/*.txt', 'a/dir/file.txt', 'fail'],
  ['a/*.txt', 'a/file.txt', 'exact'],
  ['a/*.txt**', 'a/file.txt', 'exact'],
  ['a[b-d]e', 'ae', 'fail'],
  ['a[b-d]e', 'ace', 'exact'],
  ['a[b-d]e', 'aae', 'fail'],
  ['a[^b-d]e', 'aze', 'exact'],
  ['.*', '.foo', 'exact'],
  ['.*', 'foo', 'fail'],
  ['abc.def', 'abcdef', 'fail'],
  ['abc.def', 'abc.def', 'exact'],
  ['abc.def', 'abcZdef', 'fail'],
  ['abc?def', 'abcZdef', 'exact'],
  ['abc?def', 'abcdef', 'fail'],
  ['**/foo/bar', 'foo/bar', 'exact'],
  ['**/foo/bar', 'dir/foo/bar', 'exact'],
  ['**/foo/bar', 'dir/dir2/foo/bar', 'exact'],
  ['abc/**', 'abc', 'fail'],
  ['abc/**', 'abc/def', 'exact'],
  ['abc/**', 'abc/def/ghi', 'exact'],
  ['**/.foo', '.foo', 'exact'],
  ['**/.foo', 'bar.foo', 'fail'],
  ['a(b)c/def', 'a(b)c/def', 'exact'],
  ['a(b)c/def', 'a(b)c/xyz', 'fail'],
  ['a.|)$(}+{bc', 'a.|)$(}+{bc', 'exact'],
  [
    'dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl',
    'dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl',
    'exact',
  ],
  ['dist/*.whl', 'dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl', 'exact'],
  ['a\\\\', 'a\\', 'exact'],
  ['a\\*b', 'a*b', 'exact'],
];

const multi: [string[], string, Pass][] = [
  [['**', '!util/docker/web'], 'util/docker/web/foo', 'fail'],
  [['**', '!util/docker/web', 'util/docker/web/foo'], 'util/docker/web/foo', 'exact'],
  [
    ['**', '!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl'],
    'dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl',
    'fail',
  ],
  [['**', '!dist/*.whl'], 'dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl', 'fail'],
];

/** Walks the parents of `text` top-down with MatchesUsingParentResults, as a tree walk does. */
function walkMatch(pm: PatternMatcher, text: string): boolean {
  const parent = text.split('/').slice(0, -1);
  let info: MatchInfo = EMPTY_MATCH_INFO;
  for (let i = 0; i < parent.length; i++) {
    if (parent[i] === '' && i === parent.length - 1) break;
    info = pm.matchesUsingParentResults(parent.slice(0, i + 1).join('/'), info).info;
  }
  return pm.matchesUsingParentResults(text, info).matched;
}

describe('PatternMatcher (moby/patternmatcher cases)', () => {
  it.each(cases)('exact %j vs %j -> %s', (pattern, text, pass) => {
    expect(new PatternMatcher([pattern]).matchesExact(text)).toBe(pass === 'exact');
  });
  it.each(cases)('or-parent %j vs %j -> %s', (pattern, text, pass) => {
    expect(new PatternMatcher([pattern]).matchesOrParentMatches(text)).toBe(pass !== 'fail');
  });
  it.each(cases)('using parent results %j vs %j -> %s', (pattern, text, pass) => {
    const pm = new PatternMatcher([pattern]);
    expect(walkMatch(pm, text)).toBe(pass !== 'fail');
    expect(pm.matchesUsingParentResults(text, EMPTY_MATCH_INFO).matched).toBe(pass !== 'fail');
  });
  it.each(multi)('multi %j vs %j -> %s', (patterns, text, pass) => {
    const pm = new PatternMatcher(patterns);
    expect(pm.matchesOrParentMatches(text)).toBe(pass !== 'fail');
    expect(walkMatch(pm, text)).toBe(pass !== 'fail');
    expect(pm.matchesUsingParentResults(text, EMPTY_MATCH_INFO).matched).toBe(pass !== 'fail');
  });

  it('wildcards, exceptions and folder patterns', () => {
    expect(matchesOrParentMatches('fileutils.go', ['*'])).toBe(true);
    expect(matchesOrParentMatches('fileutils.go', ['*.go'])).toBe(true);
    expect(matchesOrParentMatches('fileutils.go', ['!fileutils.go', '*.go'])).toBe(true);
    expect(matchesOrParentMatches('fileutils.go', ['*.go', '!fileutils.go'])).toBe(false);
    expect(matchesOrParentMatches('docs/README.md', ['docs', '!docs/README.md'])).toBe(false);
    expect(matchesOrParentMatches('docs/README.md', ['docs/', '!docs/README.md'])).toBe(false);
    expect(matchesOrParentMatches('docs/README.md', ['docs/*', '!docs/README.md'])).toBe(false);
    expect(matchesOrParentMatches('docs/other.md', ['docs/*', '!docs/README.md'])).toBe(true);
    expect(matchesOrParentMatches('.', ['*.go'])).toBe(false);
    expect(matchesOrParentMatches('/any/path/there', [])).toBe(false);
  });

  it('cleans leading / and ./, trailing /, and whitespace', () => {
    for (const p of ['/docs', './docs', 'docs/', '  docs  ', './/docs/.']) {
      expect(new PatternMatcher([p]).matchesOrParentMatches('docs/a/b'), p).toBe(true);
      expect(new PatternMatcher([p]).patterns[0]!.cleanedPattern, p).toBe('docs');
    }
    expect(new PatternMatcher(['docs', '  !docs/README.md']).exclusions).toBe(true);
    expect(new PatternMatcher(['docs', '!docs/README.md  ']).exclusions).toBe(true);
    expect(new PatternMatcher(['docs', 'config', '']).patterns).toHaveLength(2);
    expect(new PatternMatcher(['!/docs']).patterns[0]!.cleanedPattern).toBe('docs');
  });

  it('rejects a lone ! and malformed patterns', () => {
    expect(() => new PatternMatcher(['!'])).toThrow(FsError);
    expect(() => matchesOrParentMatches('/any/path/there', ['['])).toThrow(FsError);
    expect(() => new PatternMatcher(['a[b'])).toThrow(/syntax error/);
  });
});

// Go's filepath.Match tests, as patternmatcher's TestMatch runs them through Matches.
const goCases: [string, string, boolean | 'bad'][] = [
  ['abc', 'abc', true],
  ['*', 'abc', true],
  ['*c', 'abc', true],
  ['a*', 'a', true],
  ['a*', 'abc', true],
  ['a*', 'ab/c', false],
  ['a*/b', 'abc/b', true],
  ['a*/b', 'a/c/b', false],
  ['a*b*c*d*e*/f', 'axbxcxdxe/f', true],
  ['a*b*c*d*e*/f', 'axbxcxdxexxx/f', true],
  ['a*b*c*d*e*/f', 'axbxcxdxe/xxx/f', false],
  ['a*b*c*d*e*/f', 'axbxcxdxexxx/fff', false],
  ['a*b?c*x', 'abxbbxdbxebxczzx', true],
  ['a*b?c*x', 'abxbbxdbxebxczzy', false],
  ['ab[c]', 'abc', true],
  ['ab[b-d]', 'abc', true],
  ['ab[e-g]', 'abc', false],
  ['ab[^c]', 'abc', false],
  ['ab[^b-d]', 'abc', false],
  ['ab[^e-g]', 'abc', true],
  ['a\\*b', 'a*b', true],
  ['a\\*b', 'ab', false],
  ['a?b', 'a☺b', true],
  ['a[^a]b', 'a☺b', true],
  ['a???b', 'a☺b', false],
  ['a[^a][^a][^a]b', 'a☺b', false],
  ['[a-ζ]*', 'α', true],
  ['*[a-ζ]', 'A', false],
  ['a?b', 'a/b', false],
  ['a*b', 'a/b', false],
  ['[\\]a]', ']', true],
  ['[\\-]', '-', true],
  ['[x\\-]', 'x', true],
  ['[x\\-]', '-', true],
  ['[x\\-]', 'z', false],
  ['[\\-x]', 'x', true],
  ['[\\-x]', '-', true],
  ['[\\-x]', 'a', false],
  ['[]a]', ']', 'bad'],
  ['[-]', '-', 'bad'],
  ['[x-]', 'x', 'bad'],
  ['[x-]', '-', 'bad'],
  ['[x-]', 'z', 'bad'],
  ['[-x]', 'x', 'bad'],
  ['[-x]', '-', 'bad'],
  ['[-x]', 'a', 'bad'],
  ['\\', 'a', 'bad'],
  ['[a-b-c]', 'a', 'bad'],
  ['[', 'a', 'bad'],
  ['[^', 'a', 'bad'],
  ['[^bc', 'a', 'bad'],
  ['a[', 'a', 'bad'],
  ['a[', 'ab', 'bad'],
  ['*x', 'xxx', true],
];

describe('goMatch (Go filepath.Match cases)', () => {
  it.each(goCases)('%j vs %j -> %s', (pattern, name, want) => {
    if (want === 'bad') {
      expect(() => goMatch(pattern, name)).toThrow(FsError);
      expect(() => new PatternMatcher([pattern])).toThrow(FsError);
    } else {
      expect(goMatch(pattern, name)).toBe(want);
    }
  });

  it('patternmatcher agrees on the valid Go cases (with its parent-dir rule)', () => {
    for (const [pattern, name, want] of goCases) {
      if (want === 'bad') continue;
      // `a*` matches `ab/c` through the parent `ab`: the only case where the parent rule differs.
      const expected = pattern === 'a*' && name === 'ab/c' ? true : want;
      expect(matchesOrParentMatches(name, [pattern]), `${pattern} ${name}`).toBe(expected);
    }
  });

  it('splits a path at its first wildcard component', () => {
    expect(splitWildcards('/a/b/*.txt')).toEqual({ dir: '/a/b', pattern: '*.txt' });
    expect(splitWildcards('/a/b?/c')).toEqual({ dir: '/a', pattern: 'b?/c' });
    expect(splitWildcards('/a/b\\*c')).toEqual({ dir: '/a/b\\*c', pattern: '' });
    expect(splitWildcards('/[ab]')).toEqual({ dir: '/', pattern: '[ab]' });
  });
});
