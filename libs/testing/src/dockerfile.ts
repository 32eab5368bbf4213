/** Generated Dockerfiles for the frontend's tests and the convert benchmark. */

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
