import { describe, expect, it } from 'vitest';
import { dockerignoreMatcher, readDockerignore, selectDockerignore } from './dockerignore.js';

describe('readDockerignore (ignorefile.ReadAll)', () => {
  it('reads BuildKit’s reference file', () => {
    // The content of moby/patternmatcher ignorefile_test.go's TestReadAll.
    const content =
      'test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! \n';
    expect(readDockerignore(content)).toEqual([
      'test1',
      'test2',
      'a/file/here',
      'lastfile',
      '!inverted/abs/path',
      '!',
      '!',
    ]);
  });

  it('strips a BOM, CRLF and surrounding space; cleans paths; comments only at column 0', () => {
    const content =
      '\ufeffnode_modules\r\n  ./build/../dist/  \r\n #not a comment\n**/*.log\n!**/keep.log\n/\n';
    expect(readDockerignore(Buffer.from(content))).toEqual([
      'node_modules',
      'dist',
      '#not a comment',
      '**/*.log',
      '!**/keep.log',
      '/',
    ]);
  });

  it('is empty for an empty or comment-only file', () => {
    expect(readDockerignore('')).toEqual([]);
    expect(readDockerignore('# only\n\n   \n')).toEqual([]);
  });
});

describe('selectDockerignore', () => {
  it('prefers <Dockerfile>.dockerignore over .dockerignore', () => {
    const files = new Map([
      ['.dockerignore', 'a'],
      ['build/app.Dockerfile.dockerignore', 'b\n!c'],
    ]);
    expect(selectDockerignore(files, 'build/app.Dockerfile')).toEqual({
      name: 'build/app.Dockerfile.dockerignore',
      patterns: ['b', '!c'],
    });
    expect(selectDockerignore(files, 'Dockerfile')).toEqual({
      name: '.dockerignore',
      patterns: ['a'],
    });
    expect(selectDockerignore({ 'Dockerfile.dockerignore': 'x' })).toEqual({
      name: 'Dockerfile.dockerignore',
      patterns: ['x'],
    });
  });

  it('is undefined without an ignore file', () => {
    expect(selectDockerignore({ Dockerfile: 'FROM x' })).toBeUndefined();
  });
});

describe('dockerignoreMatcher', () => {
  const m = dockerignoreMatcher(
    readDockerignore('*.md\n!README.md\nnode_modules\n**/*.tmp\n/secret\nbuild/\n!build/keep/**\n'),
  );

  it('excludes by pattern, by parent directory, and at any depth with **', () => {
    expect(m.excludes('CHANGES.md')).toBe(true);
    expect(m.excludes('node_modules/x/index.js')).toBe(true);
    expect(m.excludes('a/b/c.tmp')).toBe(true);
    expect(m.excludes('secret')).toBe(true);
    expect(m.excludes('/secret/key')).toBe(true);
    expect(m.excludes('build/out.o')).toBe(true);
  });

  it('re-includes exceptions, and never excludes the root', () => {
    expect(m.excludes('README.md')).toBe(false);
    expect(m.excludes('docs/README.md')).toBe(false);
    expect(m.excludes('build/keep/a.txt')).toBe(false);
    expect(m.excludes('src/main.ts')).toBe(false);
    expect(m.excludes('.')).toBe(false);
    expect(m.excludes('')).toBe(false);
  });

  it('tells a walker when an excluded directory may hold re-included files', () => {
    expect(m.mayIncludeBelow('build')).toBe(true);
    expect(m.mayIncludeBelow('node_modules')).toBe(false);
    expect(dockerignoreMatcher(['node_modules']).mayIncludeBelow('node_modules')).toBe(false);
  });
});
