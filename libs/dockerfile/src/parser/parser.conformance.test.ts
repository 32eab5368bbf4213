import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DockerfileError } from '../dockerfile-error.js';
import { buildkitDataPath, caseDirs } from '../test-support/conformance-dir.js';
import { dumpAst, parse } from './parser.js';

// BuildKit's TestParseCases / TestParseErrorCases: the dump plus a newline must equal `result`
// byte for byte; every negative case must fail to parse.
const positiveDir = buildkitDataPath('parser', 'testfiles');
const negativeDir = buildkitDataPath('parser', 'testfiles-negative');

describe('BuildKit parser testfiles', () => {
  const cases = caseDirs(positiveDir);

  it('has the golden cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(25);
  });

  it.each(cases)('%s', (name) => {
    const dockerfile = readFileSync(join(positiveDir, name, 'Dockerfile'));
    const expected = readFileSync(join(positiveDir, name, 'result'), 'utf8');
    expect(dumpAst(dockerfile) + '\n').toBe(expected);
  });
});

describe('BuildKit parser testfiles-negative', () => {
  const cases = caseDirs(negativeDir);

  it('has the negative cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(4);
  });

  it.each(cases)('%s', (name) => {
    const dockerfile = readFileSync(join(negativeDir, name, 'Dockerfile'));
    let thrown: unknown;
    try {
      parse(dockerfile);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(DockerfileError);
    const err = thrown as DockerfileError;
    expect(err.code).toBe('DOCKERFILE_PARSE');
    expect(err.message.length).toBeGreaterThan(0);
    expect(err.startLine).toBeGreaterThanOrEqual(0);
  });
});
