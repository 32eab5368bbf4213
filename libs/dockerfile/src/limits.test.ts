import { reviveError } from '@kiln/protocol';
import { describe, expect, it } from 'vitest';
import { convertDockerfileSync, marshalResult, parseDockerfile } from './convert/convert.js';
import { getFrontend } from './frontend.js';
import { DOCKERFILE_LIMIT_EXCEEDED, DockerfileLimitError, frontendLimits } from './limits.js';
import { ShellLex } from './shell/lex.js';

/** The 395-byte bomb: each ARG doubles A; 20 of them make 2^20 copies of the seed. */
function argBomb(doublings: number): string {
  const lines = ['FROM scratch', 'ARG A=0123456789abcdef'];
  for (let i = 0; i < doublings; i++) lines.push('ARG A=${A}${A}');
  lines.push('RUN echo $A');
  return lines.join('\n') + '\n';
}

function thrown(fn: () => unknown): DockerfileLimitError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(DockerfileLimitError);
    return err as DockerfileLimitError;
  }
  throw new Error('expected a DockerfileLimitError');
}

describe('frontend limits', () => {
  it('stops the ARG doubling bomb at the word bound, naming the line', () => {
    const err = thrown(() => convertDockerfileSync(argBomb(20)));
    expect(err.code).toBe(DOCKERFILE_LIMIT_EXCEEDED);
    expect(err.limit).toBe('maxWordLength');
    expect(err.max).toBe(1024 * 1024);
    // 16 × 2^16 = 1 MiB fits; the 17th doubling (line 2 + 17) is the first word past it.
    expect(err.startLine).toBe(19);
    expect(err.details).toMatchObject({ limit: 'maxWordLength', startLine: 19, endLine: 19 });
  });

  it('converts the same Dockerfile below the bound (a generous bound, not a ban)', () => {
    const res = convertDockerfileSync(argBomb(10));
    expect(marshalResult(res).def.length).toBeGreaterThan(0);
  });

  it('bounds the total of all expansions per Dockerfile', () => {
    // 40 words of 50 kB each: every word is fine, together they pass a 1 MB total.
    const lines = ['FROM scratch', `ARG A=${'x'.repeat(50_000)}`];
    for (let i = 0; i < 40; i++) lines.push(`ENV V${i}=$A`);
    const err = thrown(() =>
      convertDockerfileSync(lines.join('\n'), { limits: { maxExpandedLength: 1_000_000 } }),
    );
    expect(err.limit).toBe('maxExpandedLength');
    expect(err.startLine).toBeGreaterThan(2);
  });

  it('bounds a pattern replacement that multiplies a word (${A//?/$A})', () => {
    const df = `FROM scratch\nARG A=${'y'.repeat(2000)}\nENV B=\${A//?/$A}\n`;
    const err = thrown(() => convertDockerfileSync(df));
    expect(err.limit).toBe('maxWordLength');
    expect(err.startLine).toBe(3);
  });

  it('bounds the Definition a small environment in many RUNs would make', () => {
    const lines = ['FROM scratch', `ENV A=${'z'.repeat(50_000)}`];
    for (let i = 0; i < 100; i++) lines.push(`RUN echo ${i}`);
    const err = thrown(() =>
      convertDockerfileSync(lines.join('\n'), { limits: { maxDefinitionBytes: 1_000_000 } }),
    );
    expect(err.limit).toBe('maxDefinitionBytes');
    expect(err.startLine).toBeGreaterThan(2);
  });

  it('bounds the Dockerfile size, instructions and stages', () => {
    expect(
      thrown(() =>
        parseDockerfile('FROM scratch\n# ' + 'c'.repeat(100), { maxDockerfileBytes: 64 }),
      ).limit,
    ).toBe('maxDockerfileBytes');
    const many = 'FROM scratch\n' + 'ENV A=1\n'.repeat(20);
    const ins = thrown(() => parseDockerfile(many, { maxInstructions: 10 }));
    expect([ins.limit, ins.startLine]).toEqual(['maxInstructions', 11]);
    const stages = 'FROM scratch AS a\nFROM scratch AS b\nFROM scratch AS c\n';
    const st = thrown(() => parseDockerfile(stages, { maxStages: 2 }));
    expect([st.limit, st.startLine]).toEqual(['maxStages', 3]);
  });

  it('bounds the conversion time', () => {
    // A bound of a nanosecond is past by the first check (no wall-clock assertion).
    const err = thrown(() =>
      convertDockerfileSync('FROM scratch\nENV A=1\n', { limits: { maxMillis: 1e-6 } }),
    );
    expect(err.limit).toBe('maxMillis');
  });

  it('refuses a limit that is not a positive number', () => {
    expect(() => frontendLimits({ maxWordLength: 0 })).toThrow(/invalid frontend limit/);
  });

  it('bounds a word even without a conversion budget', () => {
    const lex = new ShellLex();
    const big = 'q'.repeat(600 * 1024);
    expect(() => lex.processWord('$A$A', { A: big })).toThrow(DockerfileLimitError);
    expect(lex.processWord('$A', { A: big })).toHaveLength(big.length);
  });

  it('is revived typed from its wire form', () => {
    const err = reviveError(
      DOCKERFILE_LIMIT_EXCEEDED,
      'too long',
      { limit: 'maxWordLength', max: 5, startLine: 4, endLine: 4 },
      false,
    );
    expect(err).toBeInstanceOf(DockerfileLimitError);
    expect((err as DockerfileLimitError).startLine).toBe(4);
  });

  it('the dockerfile.v0 frontend takes the limits', async () => {
    const fe = getFrontend('dockerfile.v0')!;
    await expect(
      fe.solve({
        dockerfile: 'FROM scratch\nENV A=1\nENV B=2\n',
        opts: {},
        limits: { maxInstructions: 2 },
      }),
    ).rejects.toMatchObject({ code: DOCKERFILE_LIMIT_EXCEEDED, startLine: 3 });
  });
});
