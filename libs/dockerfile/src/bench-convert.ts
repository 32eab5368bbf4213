/**
 * The parse + convert benchmark of a 500-instruction Dockerfile (called by the bench program).
 * Parsing (text to typed instructions) and conversion (to LLB, marshaled) are timed separately.
 */
import { performance } from 'node:perf_hooks';
import { convertDockerfileSync, marshalResult, parseDockerfile } from './convert/convert.js';

/** A Dockerfile of `n` instructions over three stages, every instruction kind represented. */
export function generateDockerfile(n = 500): string {
  const lines = ['ARG BASE=busybox', 'FROM ${BASE} AS build', 'ARG VERSION=1.0'];
  const body = [
    (i: number) =>
      `RUN --mount=type=cache,target=/root/.cache echo step ${i} $VERSION > /tmp/f${i}`,
    (i: number) => `ENV V${i}=value-${i}`,
    (i: number) => `COPY src/file${i}.txt /app/file${i}.txt`,
    (i: number) => `WORKDIR /app/d${i % 7}`,
    (i: number) => `LABEL l${i}="label ${i}"`,
    (i: number) => `RUN ["/bin/sh", "-c", "echo ${i}"]`,
    (i: number) => `ADD --chown=1000:1000 data${i}.tar.gz /data/`,
    (i: number) => `EXPOSE ${8000 + i}`,
    (i: number) => `USER ${i % 2 === 0 ? 'root' : '1000'}`,
    (i: number) => `ARG A${i}=x${i}`,
  ];
  let i = 0;
  while (lines.length < n - 6) {
    if (i === 200) lines.push('FROM busybox AS second');
    lines.push(body[i % body.length]!(i));
    i++;
  }
  lines.push(
    'FROM build AS final',
    'COPY --from=second /tmp /second',
    'HEALTHCHECK --interval=30s CMD true',
  );
  lines.push('ENTRYPOINT ["/bin/sh"]', 'CMD ["-c", "true"]', 'STOPSIGNAL SIGTERM');
  return lines.join('\n') + '\n';
}

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
