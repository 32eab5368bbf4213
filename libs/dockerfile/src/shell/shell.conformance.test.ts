import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { buildkitDataPath } from '../test-support/conformance-dir.js';
import { envFromList } from './env.js';
import { ShellLex } from './lex.js';
import { ShellExpansionError } from './shell-error.js';

// Driven as BuildKit's lex_test.go drives them: envVarTest through ProcessWord (with the env as a
// list and as a map), wordsTest through ProcessWords with `ENV k=v` lines accumulating.

interface EnvCase {
  lineNo: number;
  source: string;
  expected: string;
}

function envVarCases(): EnvCase[] {
  const text = readFileSync(buildkitDataPath('shell', 'envVarTest'), 'utf8');
  const out: EnvCase[] = [];
  text.split('\n').forEach((raw, i) => {
    if (raw.startsWith('#')) return;
    const line = raw.trim();
    if (line === '') return;
    const parts = line.split('|');
    if (parts.length !== 3) throw new Error(`envVarTest line ${i + 1}: want 3 fields`);
    const [platform, source, expected] = parts.map((p) => p.trim()) as [string, string, string];
    if (!['A', 'U', 'W'].includes(platform))
      throw new Error(`envVarTest line ${i + 1}: bad tag ${platform}`);
    // W lines describe Windows only; Kiln targets Linux like BuildKit's unix run.
    if (platform === 'W') return;
    out.push({ lineNo: i + 1, source, expected });
  });
  return out;
}

const envs = ['PWD=/home', 'SHELL=bash', 'KOREAN=한국어', 'NULL='];

describe('BuildKit shell envVarTest', () => {
  const cases = envVarCases();

  it('has the cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(150);
  });

  it.each(cases)('line $lineNo: $source', ({ source, expected }) => {
    const lex = new ShellLex('\\');
    for (const env of [
      envs,
      new Map(envs.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)])),
    ]) {
      if (expected === 'error') {
        expect(() => lex.processWord(source, env)).toThrow(ShellExpansionError);
      } else {
        expect(lex.processWord(source, env)).toBe(expected);
      }
    }
  });
});

interface WordsCase {
  lineNo: number;
  test: string;
  expected: string[];
  env: string[];
}

function wordsCases(): WordsCase[] {
  const text = readFileSync(buildkitDataPath('shell', 'wordsTest'), 'utf8');
  const out: WordsCase[] = [];
  const env: string[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.startsWith('#') || line === '') return;
    if (line.startsWith('ENV ')) {
      env.push(line.slice(3).replace(/^ +/, ''));
      return;
    }
    const parts = line.split('|');
    if (parts.length !== 2) throw new Error(`wordsTest line ${i + 1}: want exactly one |`);
    out.push({
      lineNo: i + 1,
      test: (parts[0] ?? '').trim(),
      expected: (parts[1] ?? '').replace(/^ +/, '').split(','),
      env: [...env],
    });
  });
  return out;
}

describe('BuildKit shell wordsTest', () => {
  const cases = wordsCases();

  it('has the cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(24);
  });

  it.each(cases)('line $lineNo: $test', ({ test, expected, env }) => {
    const lex = new ShellLex('\\');
    for (const e of [env, envFromList(env)]) {
      let words: string[];
      try {
        words = lex.processWords(test, e);
      } catch (err) {
        expect(err).toBeInstanceOf(ShellExpansionError);
        words = ['error'];
      }
      expect(words).toEqual(expected);
    }
  });
});
