/**
 * The parse + convert benchmark of a 500-instruction Dockerfile.
 * Parsing (text to typed instructions) and conversion (to LLB, marshaled) are timed separately.
 */
import { performance } from 'node:perf_hooks';
import { convertDockerfileSync, marshalResult, parseDockerfile } from '@kiln/dockerfile';
import { generateDockerfile } from '@kiln/testing';

/** Parses and converts the generated Dockerfile once; milliseconds of each phase. */
export function benchConvert(): { parseMs: number; convertMs: number; instructions: number } {
  const text = generateDockerfile(500);
  const t0 = performance.now();
  const parsed = parseDockerfile(text);
  const t1 = performance.now();
  const r = convertDockerfileSync(parsed, {
    metaResolver: (ref) => ({
      ref,
      config: {
        architecture: 'amd64',
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: ['sha256:' + '0'.repeat(64)] },
        config: {},
      },
    }),
    targetPlatform: { os: 'linux', architecture: 'amd64' },
  });
  marshalResult(r);
  const t2 = performance.now();
  const { stages, metaArgs } = parsed.instructions;
  const instructions = metaArgs.length + stages.reduce((n, st) => n + 1 + st.commands.length, 0);
  return { parseMs: t1 - t0, convertMs: t2 - t1, instructions };
}
