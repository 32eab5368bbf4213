import { describe, expect, it } from 'vitest';
import { detectSyntax, parseDirective } from './directives.js';

// After BuildKit's directives_test.go.
describe('detectSyntax', () => {
  it.each([
    ['# syntax = foo', 'foo', 1],
    ['# syntax = docker/dfile:1.1.1-experimental\nFROM a', 'docker/dfile:1.1.1-experimental', 1],
    ['#!/bin/sh\n# syntax=foo\nFROM a', 'foo', 2],
    ['# check=skip=all\n# syntax=foo bar\n', 'foo', 2],
    ['// syntax = foo', 'foo', 1],
    ['{"syntax": "foo"}', 'foo', 0],
    ['\ufeff# syntax=foo', 'foo', 1],
  ])('%j', (text, value, line) => {
    const d = detectSyntax(text);
    expect(d?.value).toBe(value);
    expect(d?.line).toBe(line);
  });

  it('keeps the full value as cmdline', () => {
    expect(detectSyntax('# syntax=foo bar=baz\n')?.cmdline).toBe('foo bar=baz');
  });

  it.each([
    'FROM a\n# syntax=foo',
    '# hello\n# syntax=foo',
    '  # syntax=foo',
    '{"syntax": 1}',
    '[]',
    '# syntax=a\n# syntax=b',
  ])('finds none or the first in %j', (text) => {
    const d = detectSyntax(text);
    if (text.startsWith('# syntax=a')) expect(d?.value).toBe('a');
    else expect(d).toBeUndefined();
  });
});

describe('parseDirective', () => {
  it('finds # directives only', () => {
    expect(parseDirective('check', '# syntax=x\n# check=skip=all\nFROM a')?.cmdline).toBe(
      'skip=all',
    );
    expect(parseDirective('syntax', '// syntax=x')).toBeUndefined();
  });
});
