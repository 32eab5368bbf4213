/**
 * Attestations (issue 15 item 1) against the reference BuildKit v0.11.6: the same Dockerfile
 * built by buildctl (`--opt attest:provenance=mode=...`) and by `kiln build --provenance
 * mode=...`, both as OCI tarballs of the fixture image; the index (an image manifest per
 * platform, then an attestation manifest per platform: platform unknown/unknown, the reference
 * annotations, an in-toto layer) and the SLSA provenance predicate (buildType, configSource,
 * parameters, materials, completeness, mode=max's buildConfig and source map) must have the same
 * structure; times and ids differ. Then what BuildKit cannot do here (its SBOM scanner image
 * cannot be pulled): Kiln's built-in SBOM from dpkg and apk databases, and a push with
 * provenance read back from the registry. Last, `--metadata-file` of oci and docker tarballs
 * (with and without provenance) against buildctl's: the same keys, each digest its tarball's.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { differentialSuite } from './differential-suite.js';
import { runKiln } from './run-kiln.js';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
const registry = process.env.KILN_TEST_REGISTRY;

const suite = differentialSuite('bk-attest');

type Json = Record<string, unknown>;
interface Desc {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os: string; architecture: string };
  annotations?: Record<string, string>;
}

/** An OCI tarball unpacked: its top index (the one index.json points at) and blobs by digest. */
async function layout(
  tarball: string,
): Promise<{ top: { manifests: Desc[] }; blob: (d: string) => Promise<Json> }> {
  const dir = `${tarball}.d`;
  await mkdir(dir, { recursive: true });
  await run('tar', ['-xf', tarball, '-C', dir]);
  const blob = async (d: string): Promise<Json> =>
    JSON.parse(
      await readFile(join(dir, 'blobs/sha256', d.slice('sha256:'.length)), 'utf8'),
    ) as Json;
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as {
    manifests: Desc[];
  };
  expect(index.manifests[0]!.mediaType).toBe('application/vnd.oci.image.index.v1+json');
  return {
    top: (await blob(index.manifests[0]!.digest)) as unknown as { manifests: Desc[] },
    blob,
  };
}

/** The index's structure with digests replaced by what they point at. */
async function shape(tarball: string): Promise<{ index: unknown[]; statements: Json[] }> {
  const { top, blob } = await layout(tarball);
  const images = top.manifests.filter((m) => m.platform?.os !== 'unknown');
  const statements: Json[] = [];
  const index: unknown[] = [];
  for (const m of top.manifests) {
    if (m.platform?.os !== 'unknown') {
      index.push({ mediaType: m.mediaType, platform: m.platform, annotations: m.annotations });
      continue;
    }
    const refers = images.findIndex(
      (i) => i.digest === m.annotations?.['vnd.docker.reference.digest'],
    );
    const manifest = (await blob(m.digest)) as { config: Desc; layers: Desc[]; mediaType: string };
    const config = await blob(manifest.config.digest);
    const layers = [];
    for (const l of manifest.layers) {
      const st = await blob(l.digest);
      statements.push(st);
      for (const subject of st.subject as { name: string; digest: { sha256: string } }[])
        expect(`sha256:${subject.digest.sha256}`).toBe(images[refers]!.digest);
      layers.push({ mediaType: l.mediaType, annotations: l.annotations });
    }
    index.push({
      mediaType: m.mediaType,
      platform: m.platform,
      refersTo: refers,
      type: m.annotations?.['vnd.docker.reference.type'],
      manifest: { mediaType: manifest.mediaType, configType: manifest.config.mediaType, layers },
      config: { ...config, rootfs: { type: (config.rootfs as Json).type } },
    });
  }
  return { index, statements };
}

async function context(name: string, dockerfile: string): Promise<string> {
  const ctx = join(suite.dir(), `${name}-ctx`);
  await mkdir(ctx, { recursive: true });
  await writeFile(join(ctx, 'Dockerfile'), dockerfile);
  await writeFile(join(ctx, 'a'), 'a\n');
  return ctx;
}

async function kilnBuild(args: string[]): Promise<string> {
  const k = await runKiln(['build', '--progress', 'plain', ...args], {
    KILN_STATE_DIR: suite.state(),
  });
  expect(k.code, k.out).toBe(0);
  return k.out;
}

const DOCKERFILE =
  'ARG BASE\nFROM ${BASE}\nRUN --mount=type=secret,id=tok echo hi > /hi\nCOPY a /a\nRUN echo two > /two\n';

/** The predicate's fields that must agree (times, ids and the local sources' session ids aside). */
function comparable(st: Json, mode: 'min' | 'max'): Json {
  const p = st.predicate as Json;
  const inv = p.invocation as Json;
  const params = inv.parameters as Json;
  const md = p.metadata as Json;
  const bkmd = md['https://mobyproject.org/buildkit@v1#metadata'] as Json;
  const out: Json = {
    _type: st._type,
    predicateType: st.predicateType,
    // Their digests are the images' (checked in shape), which differ: times in the layers.
    subject: (st.subject as { name: string }[]).map((x) => x.name),
    builder: p.builder,
    buildType: p.buildType,
    materials: p.materials,
    configSource: inv.configSource,
    environment: inv.environment,
    frontend: params.frontend,
    // Kiln's CLI sends attributes of its own (named contexts, ...): the build arguments agree.
    buildArgs: Object.fromEntries(
      Object.entries((params.args as Record<string, string> | undefined) ?? {}).filter(([k]) =>
        k.startsWith('build-arg:'),
      ),
    ),
    secrets: params.secrets,
    locals: params.locals,
    completeness: md.completeness,
    reproducible: md.reproducible,
    metadataKeys: Object.keys(md).sort(),
    bkMetadataKeys: Object.keys(bkmd).sort(),
  };
  expect(typeof md.buildInvocationID).toBe('string');
  expect(Date.parse(md.buildStartedOn as string)).toBeLessThanOrEqual(
    Date.parse(md.buildFinishedOn as string),
  );
  if (mode === 'max') {
    const bc = p.buildConfig as {
      llbDefinition: { id: string; op: Json; inputs?: string[] }[];
      digestMapping: Record<string, string>;
    };
    // The same graph: each step's kind and inputs, in BuildKit's order.
    out.steps = bc.llbDefinition.map((s) => ({
      id: s.id,
      kind: Object.keys((s.op.Op as Json | null) ?? {})[0] ?? 'terminal',
      platform: s.op.platform,
      inputs: s.inputs,
      exec: ((s.op.Op as Json | null)?.exec as Json | undefined)?.meta,
    }));
    out.digestMappingSize = Object.keys(bc.digestMapping).length;
    const source = bkmd.source as { locations: Record<string, unknown>; infos: Json[] };
    out.locations = Object.fromEntries(
      Object.entries(source.locations).filter(([, l]) => Object.keys(l as Json).length > 0),
    );
    out.infos = source.infos.map((i) => ({ filename: i.filename, data: i.data }));
  }
  return out;
}

describe('provenance as BuildKit v0.11.6 attaches it', () => {
  for (const mode of ['min', 'max'] as const) {
    it(`mode=${mode}: the same index and predicate`, async () => {
      const ctx = await context(`prov-${mode}`, DOCKERFILE);
      const secret = join(suite.dir(), 'tok');
      await writeFile(secret, 's3cret');
      const name = `example.com/attest/${mode}:v1`;
      const bkout = join(suite.dir(), `prov-${mode}-buildkit.tar`);
      const kout = join(suite.dir(), `prov-${mode}-kiln.tar`);
      await suite
        .bk()
        .build(ctx, [
          '--opt',
          `build-arg:BASE=${fixture}`,
          '--opt',
          `attest:provenance=mode=${mode}`,
          '--secret',
          `id=tok,src=${secret}`,
          '--output',
          `type=oci,dest=${bkout},name=${name}`,
        ]);
      await kilnBuild([
        ctx,
        '--build-arg',
        `BASE=${fixture}`,
        '--provenance',
        `mode=${mode}`,
        '--secret',
        `id=tok,src=${secret}`,
        '--output',
        `type=oci,dest=${kout},name=${name}`,
      ]);
      const [b, k] = [await shape(bkout), await shape(kout)];
      expect(b.index).toHaveLength(2);
      expect(k.index).toEqual(b.index);
      expect(k.statements).toHaveLength(1);
      const [kc, bc] = [comparable(k.statements[0]!, mode), comparable(b.statements[0]!, mode)];
      expect(kc).toEqual(bc);
      const secrets = JSON.stringify(k.statements);
      expect(secrets).not.toContain('s3cret');
    }, 600_000);
  }

  it('several platforms: one attestation manifest per platform, after the images', async () => {
    const ctx = await context('prov-multi', 'ARG BASE\nFROM ${BASE}\nRUN echo hi > /hi\n');
    const bkout = join(suite.dir(), 'prov-multi-buildkit.tar');
    const kout = join(suite.dir(), 'prov-multi-kiln.tar');
    await suite
      .bk()
      .build(ctx, [
        '--opt',
        `build-arg:BASE=${fixture}`,
        '--opt',
        'attest:provenance=mode=min',
        '--opt',
        'platform=linux/amd64,linux/arm64',
        '--output',
        `type=oci,dest=${bkout}`,
      ]);
    await kilnBuild([
      ctx,
      '--build-arg',
      `BASE=${fixture}`,
      '--attest',
      'type=provenance,mode=min',
      '--platform',
      'linux/amd64,linux/arm64',
      '--output',
      `type=oci,dest=${kout}`,
    ]);
    const [b, k] = [await shape(bkout), await shape(kout)];
    expect(b.index).toHaveLength(4);
    expect(k.index).toEqual(b.index);
    const pick = (s: Json[]) => s.map((st) => comparable(st, 'min'));
    expect(pick(k.statements)).toEqual(pick(b.statements));
  }, 600_000);
});

describe('what BuildKit cannot run here', () => {
  it('--sbom: an SPDX 2.3 document of the dpkg and apk databases, as an attestation', async () => {
    const ctx = await context(
      'sbom',
      'ARG BASE\nFROM ${BASE}\n' +
        'RUN mkdir -p /var/lib/dpkg /lib/apk/db /etc && ' +
        'printf "Package: libfoo\\nStatus: install ok installed\\nVersion: 1.2-3\\nArchitecture: amd64\\nSource: foo\\n\\n' +
        'Package: gone\\nStatus: deinstall ok config-files\\nVersion: 9\\n\\n" > /var/lib/dpkg/status && ' +
        'printf "P:musl\\nV:1.2.4-r2\\nA:x86_64\\nL:MIT\\no:musl\\n\\n" > /lib/apk/db/installed && ' +
        'printf "ID=debian\\nVERSION_ID=\\"12\\"\\n" > /etc/os-release\n',
    );
    const kout = join(suite.dir(), 'sbom-kiln.tar');
    await kilnBuild([
      ctx,
      '--build-arg',
      `BASE=${fixture}`,
      '--sbom',
      'true',
      '--provenance',
      'mode=min',
      '--output',
      `type=oci,dest=${kout},name=example.com/attest/sbom:1`,
    ]);
    const k = await shape(kout);
    expect(k.index).toHaveLength(2);
    const types = k.statements.map((s) => s.predicateType).sort();
    expect(types).toEqual(['https://slsa.dev/provenance/v0.2', 'https://spdx.dev/Document']);
    const spdx = k.statements.find((s) => s.predicateType === 'https://spdx.dev/Document')!;
    expect(spdx.subject).toEqual(k.statements.find((s) => s !== spdx)!.subject);
    const doc = spdx.predicate as {
      spdxVersion: string;
      packages: {
        name: string;
        versionInfo: string;
        externalRefs: { referenceLocator: string }[];
      }[];
      relationships: unknown[];
    };
    expect(doc.spdxVersion).toBe('SPDX-2.3');
    expect(
      doc.packages.map((p) => [p.name, p.versionInfo, p.externalRefs[0]!.referenceLocator]),
    ).toEqual([
      ['musl', '1.2.4-r2', 'pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64&distro=debian-12'],
      ['libfoo', '1.2-3', 'pkg:deb/debian/libfoo@1.2-3?arch=amd64&upstream=foo&distro=debian-12'],
    ]);
    expect(doc.relationships).toHaveLength(2);
  }, 600_000);

  it('--sbom generator=IMAGE is refused with the reason', async () => {
    const ctx = await context('sbom-gen', 'ARG BASE\nFROM ${BASE}\n');
    const k = await runKiln(
      [
        'build',
        ctx,
        '--progress',
        'plain',
        '--build-arg',
        `BASE=${fixture}`,
        '--sbom',
        'generator=docker/buildkit-syft-scanner',
        '--output',
        `type=oci,dest=${join(suite.dir(), 'never.tar')}`,
      ],
      { KILN_STATE_DIR: suite.state() },
    );
    expect(k.code).toBe(1);
    expect(k.out).toMatch(/does not run scanner images/);
  }, 300_000);

  it('--push with provenance: the registry holds the index and its attestation manifest', async () => {
    const ctx = await context('prov-push', 'ARG BASE\nFROM ${BASE}\nRUN echo pushed > /p\n');
    const ref = `${registry}/attest/pushed:${process.pid}`;
    await kilnBuild([
      ctx,
      '--build-arg',
      `BASE=${fixture}`,
      '--provenance',
      'mode=max',
      '-t',
      ref,
      '--push',
    ]);
    const get = async (path: string, accept: string): Promise<Json> => {
      const r = await fetch(`http://${registry}/v2/attest/pushed/${path}`, { headers: { accept } });
      expect(r.status, path).toBe(200);
      return (await r.json()) as Json;
    };
    const index = (await get(
      `manifests/${process.pid}`,
      'application/vnd.oci.image.index.v1+json',
    )) as { manifests: Desc[] };
    expect(index.manifests.map((m) => m.platform)).toEqual([
      { architecture: 'amd64', os: 'linux' },
      { architecture: 'unknown', os: 'unknown' },
    ]);
    const att = index.manifests[1]!;
    expect(att.annotations).toEqual({
      'vnd.docker.reference.digest': index.manifests[0]!.digest,
      'vnd.docker.reference.type': 'attestation-manifest',
    });
    const m = (await get(`manifests/${att.digest}`, att.mediaType)) as { layers: Desc[] };
    const st = await get(`blobs/${m.layers[0]!.digest}`, '*/*');
    expect(st.predicateType).toBe('https://slsa.dev/provenance/v0.2');
    expect(st.subject).toEqual([
      {
        name: `pkg:docker/${registry!.replace(':', '%3A')}/attest/pushed@${process.pid}?platform=linux%2Famd64`,
        digest: { sha256: index.manifests[0]!.digest.slice('sha256:'.length) },
      },
    ]);
  }, 600_000);
});

describe('--metadata-file of image tarballs, as buildctl writes it', () => {
  for (const [type, attest] of [
    ['oci', false],
    ['oci', true],
    ['docker', false],
  ] as const) {
    it(`${type}${attest ? ' with provenance' : ''}: the same keys, each digest the tarball's`, async () => {
      const ctx = await context(
        `md-${type}-${attest}`,
        'ARG BASE\nFROM ${BASE}\nRUN echo md > /md\n',
      );
      const name = 'example.com/attest/md:1';
      const out = (tool: string) => join(suite.dir(), `md-${type}-${attest}-${tool}`);
      await suite
        .bk()
        .build(ctx, [
          '--opt',
          `build-arg:BASE=${fixture}`,
          ...(attest ? ['--opt', 'attest:provenance=mode=min'] : []),
          '--metadata-file',
          `${out('buildkit')}.json`,
          '--output',
          `type=${type},dest=${out('buildkit')}.tar,name=${name}`,
        ]);
      await kilnBuild([
        ctx,
        '--build-arg',
        `BASE=${fixture}`,
        ...(attest ? ['--provenance', 'mode=min'] : []),
        '--metadata-file',
        `${out('kiln')}.json`,
        '--output',
        `type=${type},dest=${out('kiln')}.tar,name=${name}`,
      ]);
      const read = async (tool: string) => {
        const md = JSON.parse(await readFile(`${out(tool)}.json`, 'utf8')) as Record<
          string,
          string
        >;
        const dir = `${out(tool)}.tar.d`;
        await mkdir(dir, { recursive: true });
        await run('tar', ['-xf', `${out(tool)}.tar`, '-C', dir]);
        const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as {
          manifests: Desc[];
        };
        return { md, top: index.manifests[0]!.digest, dir };
      };
      const [b, k] = [await read('buildkit'), await read('kiln')];
      const keys = (md: Record<string, string>) =>
        Object.keys(md)
          // buildinfo is deprecated in v0.11 (Kiln writes none); the descriptor is buildctl's.
          .filter((x) => !['containerimage.buildinfo', 'containerimage.descriptor'].includes(x))
          .sort();
      expect(keys(k.md)).toEqual(keys(b.md));
      // Each tool's digest is what its tarball's index.json points at.
      expect(b.md['containerimage.digest']).toBe(b.top);
      expect(k.md['containerimage.digest']).toBe(k.top);
      // The config digest names a config blob of the tarball.
      for (const t of attest ? [] : [b, k]) {
        const cfg = JSON.parse(
          await readFile(
            join(t.dir, 'blobs/sha256', t.md['containerimage.config.digest']!.slice(7)),
            'utf8',
          ),
        ) as { rootfs?: unknown; os?: string };
        expect(cfg.os).toBe('linux');
      }
      expect(k.md['image.name']).toBe(b.md['image.name']);
    }, 600_000);
  }
});
