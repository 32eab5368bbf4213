import { reviveError } from '@kiln/protocol';
import { KilnError } from '@kiln/protocol';
import { describe, expect, it } from 'vitest';
import { DockerfileError } from './dockerfile-error.js';
import { formatDockerfileError, printSourceRange } from './format-error.js';
import { parse } from './parser/parser.js';

describe('DockerfileError', () => {
  it('is a KilnError with the lines in details', () => {
    const err = new DockerfileError('boom', {
      startLine: 3,
      endLine: 5,
      cause: new Error('inner'),
    });
    expect(err).toBeInstanceOf(KilnError);
    expect(err.name).toBe('DockerfileError');
    expect(err.code).toBe('DOCKERFILE_PARSE');
    expect(err.retryable).toBe(false);
    expect(err.details).toEqual({ startLine: 3, endLine: 5 });
    expect((err.cause as Error).message).toBe('inner');
  });

  it('treats an end before the start as the start line', () => {
    const err = new DockerfileError('x', { startLine: 4, endLine: 0 });
    expect([err.startLine, err.endLine]).toEqual([4, 4]);
  });

  it('revives from its wire form', () => {
    const revived = reviveError('DOCKERFILE_PARSE', 'bad', { startLine: 2, endLine: 3 }, false);
    expect(revived).toBeInstanceOf(DockerfileError);
    expect((revived as DockerfileError).endLine).toBe(3);
  });
});

describe('formatDockerfileError', () => {
  const source = 'FROM busybox\n\nRUN true\nENV PATH\nRUN false\nRUN x\nRUN y\nRUN z\n';

  it('marks the offending line with context, as BuildKit prints it', () => {
    let err: unknown;
    try {
      parse(source);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DockerfileError);
    expect(formatDockerfileError(err as DockerfileError, source)).toBe(
      [
        'Dockerfile:4',
        '--------------------',
        '   2 |     ',
        '   3 |     RUN true',
        '   4 | >>> ENV PATH',
        '   5 |     RUN false',
        '   6 |     RUN x',
        '--------------------',
        'ERROR: ENV must have two arguments',
      ].join('\n'),
    );
  });

  it('pads a multi-line range by one line each side', () => {
    const out = printSourceRange(source, [{ start: 3, end: 4 }], 'x/Dockerfile');
    expect(out).toBe(
      [
        'x/Dockerfile:3',
        '--------------------',
        '   2 |     ',
        '   3 | >>> RUN true',
        '   4 | >>> ENV PATH',
        '   5 |     RUN false',
        '--------------------',
        '',
      ].join('\n'),
    );
  });

  it('prints nothing for a range outside the source', () => {
    expect(printSourceRange(source, [{ start: 0, end: 0 }])).toBe('');
    expect(printSourceRange(source, [{ start: 99, end: 99 }])).toBe('');
    const err = new DockerfileError('file with no instructions', { startLine: 0 });
    expect(formatDockerfileError(err, '')).toBe('ERROR: file with no instructions');
  });
});
