// COPY and ADD: sources, wildcards, destination semantics, ownership and modes, --link, --parents,
// --exclude, heredocs, URLs, git repositories, archives, and the context source.
import { describe, expect, it } from 'vitest';
import type { pb } from '@kiln/protocol';
import { convertInspect } from '../test-support/llb-inspect.js';
import type { Inspected, InspectedOp } from '../test-support/llb-inspect.js';

function copies(op: InspectedOp): pb.IFileActionCopy[] {
  return (op.op.file?.actions ?? []).map((a) => a.copy).filter((c): c is pb.IFileActionCopy => !!c);
}

function contextOp(r: Inspected): InspectedOp {
  return r.ofKind('source').find((o) => o.op.source?.identifier === 'local://context')!;
}

describe('COPY', () => {
  it('copies from the context with BuildKit’s options: wildcards allowed, contents of dirs, dest created', async () => {
    const r = await convertInspect(
      'FROM busybox\nWORKDIR /app\nCOPY *.json src/ ./\nCOPY a.txt /abs/b.txt\nCOPY c rel/\n',
    );
    const [first, second, third] = [
      r.named('COPY *.json'),
      r.named('COPY a.txt'),
      r.named('COPY c rel/'),
    ];
    expect(copies(first)).toEqual([
      expect.objectContaining({
        src: '/*.json',
        dest: '/app/',
        followSymlink: true,
        dirCopyContents: true,
        createDestPath: true,
        allowWildcard: true,
        allowEmptyWildcard: true,
        mode: -1,
      }),
      expect.objectContaining({ src: '/src', dest: '/app/' }),
    ]);
    expect(copies(second)[0]).toMatchObject({ src: '/a.txt', dest: '/abs/b.txt' });
    expect(copies(third)[0]).toMatchObject({ src: '/c', dest: '/app/rel/' });
    // The copy reads the context, the previous step is its base.
    expect(first.inputs).toContain(contextOp(r).digest);
    expect(
      r.result.imageConfig.history!.slice(-3).map((h) => [h.created_by, h.empty_layer ?? false]),
    ).toEqual([
      ['COPY *.json src/ ./ # buildkit', false],
      ['COPY a.txt /abs/b.txt # buildkit', false],
      ['COPY c rel/ # buildkit', false],
    ]);
  });

  it('--chown (names and ids, variables) and --chmod', async () => {
    const r = await convertInspect(
      'FROM busybox\nARG G=staff\nCOPY --chown=app:$G --chmod=0755 a /a\nCOPY --chown=1000 --chmod=640 b /b\n',
    );
    expect(copies(r.named('COPY --chown=app'))[0]).toMatchObject({
      mode: 0o755,
      owner: { user: { byName: { name: 'app' } }, group: { byName: { name: 'staff' } } },
    });
    expect(copies(r.named('COPY --chown=1000'))[0]).toMatchObject({
      mode: 0o640,
      owner: { user: { byID: 1000 } },
    });
    expect(r.result.imageConfig.history!.slice(-2).map((h) => h.created_by)).toEqual([
      'COPY --chown=app:staff --chmod=0755 a /a # buildkit',
      'COPY --chown=1000 --chmod=640 b /b # buildkit',
    ]);
  });

  it('--link copies onto scratch and merges the layer on top', async () => {
    const r = await convertInspect('FROM busybox\nRUN true\nCOPY --link a /a\n');
    const merge = r.final;
    expect(merge.kind).toBe('merge');
    expect(merge.name).toBe('[3/3] LINK COPY --link a /a');
    const [lower, upper] = merge.inputs.map((d) => r.byDigest(d));
    expect(lower!.name).toBe('[2/3] RUN true');
    expect(upper!.name).toBe('[3/3] COPY --link a /a');
    // The copy's base is scratch: no input besides the context.
    expect(Number(upper!.op.file!.actions![0]!.input)).toBe(-1);
    expect(upper!.metadata?.progressGroup?.weak).toBe(true);
    expect(merge.metadata?.progressGroup?.id).toBe(upper!.metadata?.progressGroup?.id);
  });

  it('--parents keeps paths below the pivot; --exclude sends exclude patterns', async () => {
    const r = await convertInspect(
      'FROM busybox\nCOPY --parents src/./pkg/**/*.go /out/\nCOPY --parents a/b.txt /out/\nCOPY --exclude=*.md --exclude=docs docs/ /d/\n',
    );
    expect(copies(r.named('COPY --parents src'))[0]).toMatchObject({
      src: '/src',
      dest: '/out/',
      includePatterns: ['pkg/**/*.go'],
    });
    expect(copies(r.named('COPY --parents a/b.txt'))[0]).toMatchObject({
      src: '/',
      includePatterns: ['a/b.txt'],
    });
    expect(copies(r.named('COPY --exclude'))[0]).toMatchObject({
      src: '/docs',
      dest: '/d/',
      excludePatterns: ['*.md', 'docs'],
    });
    expect(r.result.imageConfig.history!.slice(-3)[0]!.created_by).toBe(
      'COPY --parents src/./pkg/**/*.go /out/ # buildkit',
    );
  });

  it('heredoc sources become inline files, expanded unless quoted', async () => {
    const r = await convertInspect(
      'FROM busybox\nENV NAME=kiln\nCOPY <<EOF <<"RAW" /etc/\nhello $NAME\nEOF\nraw $NAME\nRAW\n',
    );
    const inline = r.ops.filter((o) => o.name === '[internal] preparing inline document');
    expect(inline.map((o) => o.op.file!.actions![0]!.mkfile)).toEqual([
      expect.objectContaining({ path: '/EOF', mode: 0o664, data: Buffer.from('hello kiln\n') }),
      expect.objectContaining({ path: '/RAW', mode: 0o664, data: Buffer.from('raw $NAME\n') }),
    ]);
    expect(copies(r.named('COPY <<EOF')).map((c) => [c.src, c.dest])).toEqual([
      ['/EOF', '/etc/'],
      ['/RAW', '/etc/'],
    ]);
    expect(r.result.imageConfig.history!.at(-1)!.created_by).toBe(
      'COPY <<EOF <<RAW /etc/ # buildkit',
    );
  });

  it('COPY --from a stage reads the stage and marks nothing of the context', async () => {
    const r = await convertInspect(
      'FROM busybox AS b\nRUN mkdir /out\nFROM busybox\nCOPY --from=b /out /out\n',
    );
    expect(contextOp(r)).toBeUndefined();
  });
});

describe('the build context', () => {
  it('is local://context with .dockerignore excludes and the paths the Dockerfile reads', async () => {
    const r = await convertInspect(
      'FROM busybox\nCOPY go.mod go.sum /src/\nRUN --mount=type=bind,source=scripts,target=/s true\nCOPY cmd/ /src/cmd/\n',
      {
        dockerignore: ['node_modules', '**/*.log', '!keep.log'],
      },
    );
    const ctx = contextOp(r);
    expect(ctx.name).toBe('[internal] load build context');
    expect(ctx.op.source!.attrs).toEqual({
      'local.excludepatterns': '["node_modules","**/*.log","!keep.log"]',
      'local.followpaths': '["cmd","go.mod","go.sum","scripts"]',
      'local.sharedkeyhint': 'context',
      'local.unique': 'test',
    });
  });

  it('reads everything (no followPaths) once a step reads the root', async () => {
    const r = await convertInspect('FROM busybox\nCOPY . /src\n', {
      sessionId: 'sess',
      contextName: 'ctx',
    });
    const ctx = r.ofKind('source').find((o) => o.op.source?.identifier === 'local://ctx')!;
    expect(ctx.op.source!.attrs).toEqual({ 'local.session': 'sess', 'local.sharedkeyhint': 'ctx' });
  });
});

describe('ADD', () => {
  it('unpacks local archives (unless --unpack=false)', async () => {
    const r = await convertInspect(
      'FROM busybox\nADD rootfs.tar.gz /\nADD --unpack=false other.tar /o/\n',
    );
    expect(copies(r.named('ADD rootfs'))[0]).toMatchObject({
      src: '/rootfs.tar.gz',
      dest: '/',
      attemptUnpackDockerCompatibility: true,
    });
    expect(copies(r.named('ADD --unpack=false'))[0]!.attemptUnpackDockerCompatibility).toBeFalsy();
  });

  it('downloads URLs with an http source, named after the URL, checksum pinned', async () => {
    const sum = 'sha256:' + 'c'.repeat(64);
    const r = await convertInspect(
      `FROM busybox\nADD --checksum=${sum} https://example.com/dl/tool.tar.gz?x=1 /opt/\nADD https://example.com/ /root/\n`,
    );
    const [tool, root] = r
      .ofKind('source')
      .filter((o) => (o.op.source?.identifier ?? '').startsWith('https://'));
    expect(tool!.op.source).toMatchObject({
      identifier: 'https://example.com/dl/tool.tar.gz?x=1',
      attrs: { 'http.checksum': sum, 'http.filename': 'tool.tar.gz' },
    });
    expect(tool!.name).toBe(
      `[2/3] ADD --checksum=${sum} https://example.com/dl/tool.tar.gz?x=1 /opt/`,
    );
    expect(root!.op.source!.attrs).toEqual({ 'http.filename': '__unnamed__' });
    const [addTool, addRoot] = r.ofKind('file');
    expect(copies(addTool!)[0]).toMatchObject({
      src: '/tool.tar.gz',
      dest: '/opt/',
      createDestPath: true,
    });
    expect(copies(addTool!)[0]!.attemptUnpackDockerCompatibility).toBeFalsy();
    expect(copies(addRoot!)[0]).toMatchObject({
      src: '/__unnamed__',
      dest: '/root/',
      createDestPath: true,
    });
  });

  it('clones git URLs with a git source (ref, subdir, --keep-git-dir)', async () => {
    const r = await convertInspect(
      'FROM busybox\nADD --keep-git-dir https://github.com/moby/buildkit.git#v0.12.0:docs /src\nADD git@github.com:org/repo.git /r\n',
    );
    const gits = r
      .ofKind('source')
      .filter((o) => (o.op.source?.identifier ?? '').startsWith('git://'));
    expect(gits.map((g) => g.op.source!.identifier)).toEqual([
      'git://github.com/moby/buildkit.git#v0.12.0:docs',
      'git://git@github.com/org/repo.git',
    ]);
    expect(gits[0]!.op.source!.attrs).toMatchObject({
      'git.keepgitdir': 'true',
      'git.fullurl': 'https://github.com/moby/buildkit.git',
    });
    expect(copies(r.named('ADD --keep-git-dir', 'file'))[0]).toMatchObject({
      src: '/',
      dest: '/src',
      createDestPath: true,
    });
  });

  it('--keep-git-dir makes any http(s) URL a repository (TestAddKeepGitDirNonSuffixedURL)', async () => {
    const ids = async (df: string): Promise<string[]> =>
      (await convertInspect(df)).ofKind('source').map((o) => o.op.source?.identifier ?? '');
    expect(
      await ids('FROM scratch\nADD --keep-git-dir=true https://git.sr.ht/~foo/bar#main /dst\n'),
    ).toEqual(['git://git.sr.ht/~foo/bar#main']);
    expect(
      await ids('FROM scratch\nADD --keep-git-dir=false https://git.sr.ht/~foo/bar#main /dst\n'),
    ).toEqual(['git://git.sr.ht/~foo/bar#main']);
    expect(await ids('FROM scratch\nADD https://git.sr.ht/~foo/bar /dst\n')).toEqual([
      'https://git.sr.ht/~foo/bar',
    ]);
    expect(
      await ids('FROM scratch\nADD https://github.com/moby/buildkit.git#master /dst\n'),
    ).toEqual(['git://github.com/moby/buildkit.git#master']);
  });

  it('COPY refuses git sources; inconsistent keep-git-dir is an error', async () => {
    await expect(
      convertInspect('FROM busybox\nCOPY https://github.com/a/b.git /x\n'),
    ).rejects.toThrow("source can't be a git ref for COPY");
    await expect(
      convertInspect(
        'FROM busybox\nADD --keep-git-dir=false https://github.com/a/b.git?keep-git-dir=true /x\n',
      ),
    ).rejects.toThrow('inconsistent keep-git-dir configuration');
  });
});
