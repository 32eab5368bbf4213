// Cases ported from moby/patternmatcher's patternmatcher_test.go (TestMatches, TestMatch and the
// Matches/TestClean* tests), run against every matching entry point as upstream does.
import { describe, expect, it } from 'vitest';
import { BadPatternError, PatternMatcher, matchesOrParentMatches } from './patternmatcher.js';
import type { MatchInfo } from './patternmatcher.js';

type Pass = 'fail' | 'exact' | 'inexact';

const tests: [string, string, Pass][] = [
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

const multiPatternTests: [string[], string, Pass][] = [
  [['**', '!util/docker/web'], 'util/docker/web/foo', 'fail'],
  [['**', '!util/docker/web', 'util/docker/web/foo'], 'util/docker/web/foo', 'exact'],
  [
    ['**', '!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl'],
    'dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl',
    'fail',
  ],
  [['**', '!dist/*.whl'], 'dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl', 'fail'],
];

function parentDirs(text: string): string[] {
  const i = text.lastIndexOf('/');
  const parent = i < 0 ? '.' : text.slice(0, i).replace(/\/+$/, '') || '/';
  if (parent === '.') return [];
  const parts = parent.split('/');
  return parts.map((_, j) => parts.slice(0, j + 1).join('/'));
}

describe('PatternMatcher (patternmatcher_test.go TestMatches)', () => {
  describe('matchesExact', () => {
    for (const [pattern, text, pass] of tests) {
      it(`${pattern} ~ ${text}`, () => {
        expect(new PatternMatcher([pattern]).matchesExact(text)).toBe(pass === 'exact');
      });
    }
  });

  describe('matchesOrParentMatches', () => {
    for (const [patterns, text, pass] of [
      ...tests.map(([p, t, s]) => [[p], t, s] as [string[], string, Pass]),
      ...multiPatternTests,
    ]) {
      it(`${patterns.join(',')} ~ ${text}`, () => {
        expect(new PatternMatcher(patterns).matchesOrParentMatches(text)).toBe(pass !== 'fail');
      });
    }
  });

  describe('matchesUsingParentResults, walking down from the root', () => {
    for (const [patterns, text, pass] of [
      ...tests.map(([p, t, s]) => [[p], t, s] as [string[], string, Pass]),
      ...multiPatternTests,
    ]) {
      it(`${patterns.join(',')} ~ ${text}`, () => {
        const pm = new PatternMatcher(patterns);
        let info: MatchInfo | undefined;
        for (const dir of parentDirs(text)) info = pm.matchesUsingParentResults(dir, info).info;
        expect(pm.matchesUsingParentResults(text, info).matched).toBe(pass !== 'fail');
      });
    }
  });

  describe('matchesUsingParentResults without context', () => {
    for (const [patterns, text, pass] of [
      ...tests.map(([p, t, s]) => [[p], t, s] as [string[], string, Pass]),
      ...multiPatternTests,
    ]) {
      it(`${patterns.join(',')} ~ ${text}`, () => {
        expect(new PatternMatcher(patterns).matchesUsingParentResults(text).matched).toBe(
          pass !== 'fail',
        );
      });
    }
  });
});

// Go's filepath.Match tests as patternmatcher runs them (TestMatch).
const matchTests: [string, string, boolean, boolean][] = [
  ['abc', 'abc', true, false],
  ['*', 'abc', true, false],
  ['*c', 'abc', true, false],
  ['a*', 'a', true, false],
  ['a*', 'abc', true, false],
  ['a*', 'ab/c', true, false],
  ['a*/b', 'abc/b', true, false],
  ['a*/b', 'a/c/b', false, false],
  ['a*b*c*d*e*/f', 'axbxcxdxe/f', true, false],
  ['a*b*c*d*e*/f', 'axbxcxdxexxx/f', true, false],
  ['a*b*c*d*e*/f', 'axbxcxdxe/xxx/f', false, false],
  ['a*b*c*d*e*/f', 'axbxcxdxexxx/fff', false, false],
  ['a*b?c*x', 'abxbbxdbxebxczzx', true, false],
  ['a*b?c*x', 'abxbbxdbxebxczzy', false, false],
  ['ab[c]', 'abc', true, false],
  ['ab[b-d]', 'abc', true, false],
  ['ab[e-g]', 'abc', false, false],
  ['ab[^c]', 'abc', false, false],
  ['ab[^b-d]', 'abc', false, false],
  ['ab[^e-g]', 'abc', true, false],
  ['a\\*b', 'a*b', true, false],
  ['a\\*b', 'ab', false, false],
  ['a?b', 'a☺b', true, false],
  ['a[^a]b', 'a☺b', true, false],
  ['a???b', 'a☺b', false, false],
  ['a[^a][^a][^a]b', 'a☺b', false, false],
  ['[a-ζ]*', 'α', true, false],
  ['*[a-ζ]', 'A', false, false],
  ['a?b', 'a/b', false, false],
  ['a*b', 'a/b', false, false],
  ['[\\]a]', ']', true, false],
  ['[\\-]', '-', true, false],
  ['[x\\-]', 'x', true, false],
  ['[x\\-]', '-', true, false],
  ['[x\\-]', 'z', false, false],
  ['[\\-x]', 'x', true, false],
  ['[\\-x]', '-', true, false],
  ['[\\-x]', 'a', false, false],
  ['[]a]', ']', false, true],
  ['[-]', '-', false, true],
  ['[x-]', 'x', false, true],
  ['[x-]', '-', false, true],
  ['[x-]', 'z', false, true],
  ['[-x]', 'x', false, true],
  ['[-x]', '-', false, true],
  ['[-x]', 'a', false, true],
  ['\\', 'a', false, true],
  ['[a-b-c]', 'a', false, true],
  ['[', 'a', false, true],
  ['[^', 'a', false, true],
  ['[^bc', 'a', false, true],
  ['a[', 'a', false, true],
  ['a[', 'ab', false, true],
  ['*x', 'xxx', true, false],
];

describe('Go filepath.Match cases (TestMatch)', () => {
  for (const [pattern, s, match, bad] of matchTests) {
    it(`${pattern} ~ ${s}`, () => {
      if (bad) expect(() => matchesOrParentMatches(s, [pattern])).toThrow(BadPatternError);
      else expect(matchesOrParentMatches(s, [pattern])).toBe(match);
    });
  }
});

describe('Matches helpers and pattern cleaning', () => {
  it('wildcards and exclusions in order', () => {
    expect(matchesOrParentMatches('fileutils.go', ['*'])).toBe(true);
    expect(matchesOrParentMatches('fileutils.go', ['*.go'])).toBe(true);
    expect(matchesOrParentMatches('fileutils.go', ['!fileutils.go', '*.go'])).toBe(true);
    expect(matchesOrParentMatches('fileutils.go', ['*.go', '!fileutils.go'])).toBe(false);
  });

  it('a folder then an exception inside it', () => {
    expect(matchesOrParentMatches('docs/README.md', ['docs', '!docs/README.md'])).toBe(false);
    expect(matchesOrParentMatches('docs/README.md', ['docs/', '!docs/README.md'])).toBe(false);
    expect(matchesOrParentMatches('docs/README.md', ['docs/*', '!docs/README.md'])).toBe(false);
    expect(matchesOrParentMatches('docs/other.md', ['docs', '!docs/README.md'])).toBe(true);
  });

  it('never matches the context root, nothing with no patterns', () => {
    expect(matchesOrParentMatches('.', ['*.go'])).toBe(false);
    expect(matchesOrParentMatches('/any/path/there', [])).toBe(false);
  });

  it('rejects a lone "!" and malformed patterns', () => {
    expect(() => new PatternMatcher(['!'])).toThrow('illegal exclusion pattern: "!"');
    expect(() => matchesOrParentMatches('/any/path/there', ['['])).toThrow(BadPatternError);
  });

  it('cleans patterns: empty ones dropped, spaces trimmed, exceptions noted', () => {
    expect(new PatternMatcher(['docs', 'config']).patterns).toHaveLength(2);
    expect(new PatternMatcher(['docs', 'config', '']).patterns).toHaveLength(2);
    expect(new PatternMatcher(['docs', '!docs/README.md']).exclusions).toBe(true);
    expect(new PatternMatcher(['docs', '  !docs/README.md']).exclusions).toBe(true);
    expect(new PatternMatcher(['docs', '!docs/README.md  ']).exclusions).toBe(true);
    expect(new PatternMatcher(['docs']).exclusions).toBe(false);
    expect(new PatternMatcher(['./a//b/../c/']).patterns[0]!.toString()).toBe('a/c');
  });
});
