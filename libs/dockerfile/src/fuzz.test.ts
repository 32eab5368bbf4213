import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DockerfileError } from './dockerfile-error.js';
import { formatDockerfileError } from './format-error.js';
import { parse } from './parser/parser.js';
import { ShellLex } from './shell/lex.js';
import { ShellExpansionError } from './shell/shell-error.js';
import { buildkitDataPath } from './test-support/conformance-dir.js';

// Never a raw crash: random and mutated Dockerfiles either parse or fail with a DockerfileError,
// random words either expand or fail with a ShellExpansionError. Seeded, so failures reproduce.

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ALPHABET = [
  ...'abcXYZ019 _-=:/.,',
  '\\',
  '`',
  '"',
  "'",
  '$',
  '{',
  '}',
  '[',
  ']',
  '<',
  '<<',
  '<<-',
  '#',
  '\n',
  '\r\n',
  '\t',
  '\v',
  '\f',
  '\u0000',
  '\u00a0',
  '\u0085',
  '\u2028',
  '\ufeff',
  'é',
  '한',
  '😀',
  '\ud800',
  '\udcff',
  '--',
  '${',
  ':-',
  '//',
  '%%',
];

const KEYWORDS = [
  'FROM',
  'RUN',
  'CMD',
  'LABEL',
  'MAINTAINER',
  'EXPOSE',
  'ENV',
  'ADD',
  'COPY',
  'ENTRYPOINT',
  'VOLUME',
  'USER',
  'WORKDIR',
  'ARG',
  'ONBUILD',
  'STOPSIGNAL',
  'HEALTHCHECK',
  'SHELL',
  'onbuild run',
  'healthcheck cmd',
];

const SEED_CORPUS = [
  'FROM alpine\nRUN echo hi\n',
  '# syntax=docker/dockerfile:1\n# escape=`\nFROM a\nRUN b `\n  c\n',
  'FROM a\nCOPY <<EOF /x\nhello\nEOF\nRUN <<-A cat\n\tbody\n\tA\n',
  'FROM a\nENV a=b c="d e" f\\ g=h\nLABEL x y z\n',
  'FROM a\nCMD ["a", "b"]\nENTRYPOINT [1]\nVOLUME ["/v"]\n',
  'FROM a\nHEALTHCHECK --interval=5s CMD ["x"]\nONBUILD ADD . /app\n',
  'FROM a\nRUN a \\\n\n  # c\n  b\n',
  'ARG X=${Y:-z}\nFROM $X\n',
];

function corpus(): string[] {
  const out = [...SEED_CORPUS];
  for (const sub of ['testfiles', 'testfiles-negative']) {
    const dir = buildkitDataPath('parser', sub);
    if (!existsSync(dir)) continue;
    for (const name of readdirSync(dir)) {
      const file = join(dir, name, 'Dockerfile');
      if (existsSync(file)) out.push(readFileSync(file, 'utf8'));
    }
  }
  return out;
}

function pick<T>(rnd: () => number, items: readonly T[]): T {
  const item = items[Math.floor(rnd() * items.length)];
  if (item === undefined) throw new Error('empty list');
  return item;
}

function mutate(rnd: () => number, text: string): string {
  let s = text;
  const rounds = 1 + Math.floor(rnd() * 6);
  for (let r = 0; r < rounds; r++) {
    const pos = Math.floor(rnd() * (s.length + 1));
    switch (Math.floor(rnd() * 6)) {
      case 0: {
        let ins = '';
        const n = 1 + Math.floor(rnd() * 8);
        for (let i = 0; i < n; i++) ins += pick(rnd, ALPHABET);
        s = s.slice(0, pos) + ins + s.slice(pos);
        break;
      }
      case 1:
        s = s.slice(0, pos) + s.slice(pos + Math.floor(rnd() * 10));
        break;
      case 2:
        s = s.slice(0, pos) + '\n' + pick(rnd, KEYWORDS) + ' ' + s.slice(pos);
        break;
      case 3: {
        const lines = s.split('\n');
        const i = Math.floor(rnd() * lines.length);
        lines.splice(i, 0, lines[Math.floor(rnd() * lines.length)] ?? '');
        s = lines.join('\n');
        break;
      }
      case 4:
        s =
          s.slice(0, pos) +
          pick(rnd, ['\\\n', '`\n', '<<EOF', '\nEOF\n', '["', '"]', '# escape=`\n']) +
          s.slice(pos);
        break;
      default:
        s = s.slice(0, pos) + s.slice(pos).toUpperCase();
    }
  }
  return s;
}

function randomBytes(rnd: () => number): Uint8Array {
  const n = Math.floor(rnd() * 200);
  const out = new Uint8Array(n);
  const common = [0x0a, 0x20, 0x5c, 0x22, 0x27, 0x24, 0x7b, 0x7d, 0x3c, 0x23, 0x5b, 0x5d];
  for (let i = 0; i < n; i++) {
    out[i] = rnd() < 0.5 ? pick(rnd, common) : Math.floor(rnd() * 256);
  }
  return out;
}

function checkParse(input: string | Uint8Array): 'ok' | 'error' {
  let result;
  try {
    result = parse(input);
  } catch (err) {
    if (!(err instanceof DockerfileError)) throw err;
    // A bug in the port surfaces as an internal error: the fuzzer must never find one.
    expect(err.message).not.toMatch(/^internal parser error/);
    expect(err.endLine).toBeGreaterThanOrEqual(err.startLine);
    expect(typeof formatDockerfileError(err, typeof input === 'string' ? input : '')).toBe(
      'string',
    );
    return 'error';
  }
  expect(typeof result.ast.dump()).toBe('string');
  let prevEnd = 0;
  for (const child of result.ast.children) {
    expect(child.startLine).toBeGreaterThan(prevEnd);
    expect(child.endLine).toBeGreaterThanOrEqual(child.startLine);
    prevEnd = child.endLine;
  }
  return 'ok';
}

describe('fuzz', () => {
  it('parses mutated Dockerfiles or fails with DockerfileError', () => {
    const rnd = mulberry32(0x6b696c6e);
    const base = corpus();
    const seen = { ok: 0, error: 0 };
    for (let i = 0; i < 4000; i++) {
      const text = mutate(rnd, pick(rnd, base));
      try {
        seen[checkParse(text)]++;
      } catch (err) {
        throw new Error(`iteration ${i} crashed on ${JSON.stringify(text)}`, { cause: err });
      }
    }
    // The mutations must exercise both outcomes.
    expect(seen.ok).toBeGreaterThan(100);
    expect(seen.error).toBeGreaterThan(10);
  });

  it('parses random bytes or fails with DockerfileError', () => {
    const rnd = mulberry32(42);
    for (let i = 0; i < 3000; i++) {
      const bytes = randomBytes(rnd);
      try {
        checkParse(bytes);
      } catch (err) {
        throw new Error(`iteration ${i} crashed on bytes ${JSON.stringify([...bytes])}`, {
          cause: err,
        });
      }
    }
  });

  it('expands random words or fails with ShellExpansionError', () => {
    const rnd = mulberry32(7);
    const env = { A: 'a b', B: '', C: '*x?/', PWD: '/home' };
    const seen = { ok: 0, error: 0 };
    for (let i = 0; i < 6000; i++) {
      let word = '';
      const n = Math.floor(rnd() * 16);
      for (let j = 0; j < n; j++)
        word += pick(rnd, [...ALPHABET, 'A', 'B', 'C', '?', '*', '#', '%', '/', '+']);
      const lex = new ShellLex(rnd() < 0.8 ? '\\' : '`', {
        rawQuotes: rnd() < 0.3,
        rawEscapes: rnd() < 0.3,
        skipProcessQuotes: rnd() < 0.2,
        skipUnsetEnv: rnd() < 0.3,
      });
      try {
        const r = lex.processWordWithMatches(word, env);
        expect(typeof r.result).toBe('string');
        seen.ok++;
      } catch (err) {
        if (!(err instanceof ShellExpansionError)) {
          throw new Error(`iteration ${i} crashed on ${JSON.stringify(word)}`, { cause: err });
        }
        seen.error++;
      }
    }
    expect(seen.ok).toBeGreaterThan(1000);
    expect(seen.error).toBeGreaterThan(100);
  });
});
