// Named contexts (`--build-context`, the `context:NAME` frontend attributes), as BuildKit's
// dockerui NamedContext: a stage replaced, a FROM image or COPY --from image replaced, the
// platform-specific name first, every source kind, and the errors.
import { describe, expect, it } from 'vitest';
import { DockerfileError } from '../dockerfile-error.js';
import { convertInspect, fixedResolver } from '../test-support/llb-inspect.js';
import { convertOptionsFromAttrs } from '../frontend.js';
import { familiarImageName } from './named-context.js';

const identifier = (o: { op: { source?: { identifier?: string | null } | null } }): string =>
  o.op.source?.identifier ?? '';

describe('named contexts', () => {
  it('names images as docker prints them', () => {
    expect(familiarImageName('docker.io/library/alpine:latest')).toBe('alpine');
    expect(familiarImageName('alpine:3.17')).toBe('alpine:3.17');
    expect(familiarImageName('docker.io/org/x')).toBe('org/x');
    expect(familiarImageName('127.0.0.1:5000/a/b:latest')).toBe('127.0.0.1:5000/a/b');
  });

  it('reads context:NAME attributes', () => {
    const o = convertOptionsFromAttrs({ 'context:base': 'local:base', context: 'ctx' });
    expect(o.namedContexts).toEqual({ base: 'local:base' });
    expect(o.contextName).toBe('ctx');
  });

  it('replaces a stage by a local context: its commands do not run', async () => {
    const r = await convertInspect(
      'FROM busybox AS deps\nRUN exit 1\nFROM busybox\nCOPY --from=deps /a /a\n',
      { namedContexts: { deps: 'local:deps' }, sessionId: 'S' },
    );
    expect(r.ops.some((o) => o.name.includes('exit 1'))).toBe(false);
    const src = r.named('[context deps] load from client');
    expect(identifier(src)).toBe('local://deps');
    expect(src.op.source?.attrs?.['local.session']).toBe('S');
    expect(src.op.source?.attrs?.['local.sharedkeyhint']).toBe('context:deps');
    expect(r.named('COPY --from=deps').inputs).toContain(src.digest);
  });

  it('replaces a FROM image and a COPY --from image, resolving the new image', async () => {
    const calls: string[] = [];
    const r = await convertInspect('FROM alpine:3.17\nCOPY --from=golang /go /go\nRUN true\n', {
      metaResolver: fixedResolver({ 'docker.io/library/debian:12': { WorkingDir: '/w' } }, calls),
      namedContexts: {
        'alpine:3.17': 'docker-image://debian:12',
        golang: 'docker-image://busybox',
      },
    });
    expect(calls.sort()).toEqual([
      'docker.io/library/busybox:latest linux/amd64',
      'docker.io/library/debian:12 linux/amd64',
    ]);
    const base = r.named('[context alpine:3.17] debian:12');
    expect(identifier(base)).toMatch(/^docker-image:\/\/docker\.io\/library\/debian:12@sha256:/);
    expect(identifier(r.named('[context golang] busybox'))).toMatch(
      /^docker-image:\/\/docker\.io\/library\/busybox:latest@/,
    );
    // The stage is built on the new image: its config (WORKDIR) and its commands.
    expect(r.execs()[0]!.meta?.cwd).toBe('/w');
    expect(r.result.imageConfig.config.WorkingDir).toBe('/w');
  });

  it('prefers NAME::platform; git, http and scratch sources', async () => {
    const r = await convertInspect(
      'FROM scratch\nCOPY --from=src / /s\nCOPY --from=file / /f\nCOPY --from=empty / /e\n',
      {
        namedContexts: {
          src: 'https://example.com/wrong.git',
          'src::linux/amd64': 'https://example.com/repo.git#v1:sub',
          file: 'https://example.com/f.txt',
          empty: 'docker-image://scratch',
        },
      },
    );
    expect(identifier(r.named('[context src::linux/amd64]'))).toBe(
      'git://example.com/repo.git#v1:sub',
    );
    expect(identifier(r.named('[context file]'))).toBe('https://example.com/f.txt');
  });

  it('refuses oci-layout and unknown sources with the line', async () => {
    for (const [v, msg] of [
      ['oci-layout://store@sha256:' + 'a'.repeat(64), 'oci-layout contexts are not supported'],
      ['ftp://x', 'unsupported context source ftp for x'],
      ['nocolon', 'invalid context specifier nocolon for x'],
    ] as const) {
      const err = await convertInspect('FROM busybox\nCOPY --from=x / /\n', {
        namedContexts: { x: v },
      }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(DockerfileError);
      expect((err as DockerfileError).message).toContain(msg);
      expect((err as DockerfileError).startLine).toBe(2);
    }
  });
});
