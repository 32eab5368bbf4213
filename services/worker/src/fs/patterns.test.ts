import { describe, expect, it } from 'vitest';
import { FsError } from '@kiln/layers';
import { goMatch, splitWildcards } from './match.js';
import { PatternMatcher, matchesOrParentMatches } from './patterns.js';

// moby/patternmatcher's own cases run against the one port in @kiln/dockerfile
// (libs/dockerfile/src/patterns/patternmatcher.test.ts); these check the worker's adapter:
// cleaning of copy and local-source filters, and malformed patterns as FsErrors.
describe('PatternMatcher (the worker adapter)', () => {
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
