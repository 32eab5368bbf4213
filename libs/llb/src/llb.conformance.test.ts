/**
 * LLB wire conformance against vectors made by BuildKit's own Go client
 * ($KILN_CONFORMANCE_DIR/llb/vectors.json, default ../shared/conformance).
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pb } from '@kiln/protocol';
import { describe, expect, it } from 'vitest';
import { dumpLlb, marshalLlb } from './debug.js';
import { Definition, marshal, parseDefinition } from './definition.js';
import { copy, mkdir, mkfile } from './fileop.js';
import { metadataToGoJson, opFromGoJson, opToGoJson } from './go-json-pb.js';
import { diff, merge } from './merge-diff.js';
import { LinuxAmd64, LinuxArm64 } from '@kiln/protocol';
import { git, http, image, local } from './source.js';
import { NetMode, SecurityMode, scratch } from './state.js';
import type { State } from './state.js';
import { sha256Digest } from './vertex.js';

interface Vector {
  name: string;
  defs_base64: string[];
  digests: string[];
  ops_json: unknown[];
  metadata: Record<string, unknown>;
  definition_base64: string;
}

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const dir = process.env.KILN_CONFORMANCE_DIR ?? resolve(repoRoot, '../shared/conformance');
const vectors = JSON.parse(readFileSync(resolve(dir, 'llb/vectors.json'), 'utf8')) as Vector[];

const bb = '127.0.0.1:5000/busybox:latest';

/** The same graphs, written with our builder API. `uniqueId` is the vector's local.unique value. */
const builders: Record<string, (uniqueId: string) => { state: State; localUniqueId?: string }> = {
  'scratch-mkfile': () => ({ state: scratch().file(mkfile('/hello', 0o644, 'hi\n')) }),
  'image-amd64': () => ({ state: image(bb) }),
  'image-arm64-digest': () => ({
    state: image('alpine@sha256:4b7ce07002c69e8f3d704a9c5d6fd3053be500b7f1c69fc0d80990c2ad8dd412', {
      platform: LinuxArm64,
    }),
  }),
  'exec-simple': () => ({
    state: image(bb)
      .run({ args: ['echo', 'hi'], env: { FOO: 'bar' }, dir: '/work', user: '1000:1000' })
      .root(),
  }),
  'exec-network-none-insecure': () => ({
    state: image(bb)
      .run({ shlex: '/bin/sh -c true', network: NetMode.NONE, security: SecurityMode.INSECURE })
      .root(),
  }),
  'exec-mounts': (uniqueId) => {
    const ctx = local('context', {
      includePatterns: ['src/**', 'go.mod'],
      excludePatterns: ['**/*.tmp'],
      sharedKeyHint: 'ctx',
    });
    const st = image(bb).run({
      args: ['sh', '-c', 'ls /src'],
      mounts: [
        { target: '/root/.cache', cache: { id: 'gocache', sharing: 'locked' } },
        { target: '/src', source: ctx, selector: '/src', readonly: true },
        { target: '/tmp', tmpfs: { size: 64 << 20 } },
      ],
      secrets: [{ id: 'token', target: '/run/secrets/token' }],
      ssh: [{ id: 'default', target: '/run/ssh.sock' }],
    });
    return { state: st.root(), localUniqueId: uniqueId };
  },
  'exec-second-output': () => ({
    state: image(bb)
      .run({ args: ['sh', '-c', 'echo x > /out/x'], mounts: [{ target: '/out' }] })
      .getMount('/out'),
  }),
  'file-ops': () => ({
    state: scratch().file(
      mkdir('/a/b', 0o755, { makeParents: true, chown: { user: 1, group: 2 } })
        .mkfile('/a/b/c.txt', 0o600, 'data')
        .rm('/a/old', { allowNotFound: true }),
    ),
  }),
  'copy-from': (uniqueId) => ({
    state: image(bb).file(
      copy(local('context'), '/src/*.go', '/app/', {
        chown: 'app',
        mode: 0o755,
        followSymlinks: true,
        copyDirContentsOnly: true,
        createDestPath: true,
        allowWildcard: true,
        allowEmptyWildcard: true,
        includePatterns: ['*.go'],
        excludePatterns: ['*_test.go'],
      }),
    ),
    localUniqueId: uniqueId,
  }),
  'merge-diff': () => {
    const base = image(bb);
    const a = base.run({ args: ['touch', '/a'] }).root();
    const b = base.run({ args: ['touch', '/b'] }).root();
    return { state: merge([diff(base, a), b]) };
  },
  'git-http-sources': () => {
    const repo = git('https://github.com/moby/buildkit.git', 'v0.11.6', { keepGitDir: true });
    const withReadme = scratch().file(copy(repo, '/README.md', '/README.md'));
    const file = http('https://example.com/file.tar.gz', {
      checksum: 'sha256:0000000000000000000000000000000000000000000000000000000000000000',
      filename: 'f.tgz',
      perm: 0o644,
    });
    return { state: withReadme.file(copy(file, '/f.tgz', '/f.tgz')) };
  },
  'metadata-ignore-cache': () => ({
    state: image(bb)
      .run({ args: ['date'], ignoreCache: true, customName: '[stage 1/2] RUN date' })
      .root(),
  }),
  'multi-platform-chain': () => ({
    state: image(bb, { platform: LinuxArm64 })
      .run({ args: ['uname', '-m'] })
      .root(),
  }),
};

function localUnique(v: Vector): string {
  const m = /"local\.unique":\s*"([a-z0-9]+)"/.exec(JSON.stringify(v.ops_json));
  return m?.[1] ?? '';
}

const b64 = (u: Uint8Array): string => Buffer.from(u).toString('base64');

describe('LLB conformance vectors', () => {
  it('has vectors to check', () => {
    expect(vectors.length).toBeGreaterThan(0);
  });

  for (const v of vectors) {
    describe(v.name, () => {
      it('decodes and re-encodes every op to identical bytes with the given digests', () => {
        v.defs_base64.forEach((s, i) => {
          const bytes = Buffer.from(s, 'base64');
          expect(sha256Digest(bytes)).toBe(v.digests[i]);
          expect(b64(pb.Op.encode(pb.Op.decode(bytes)).finish())).toBe(s);
        });
      });

      it('prints each op as BuildKit Go JSON, and reads it back to the same bytes', () => {
        v.defs_base64.forEach((s, i) => {
          const op = pb.Op.decode(Buffer.from(s, 'base64'));
          const json = opToGoJson(op);
          expect(json).toEqual(v.ops_json[i]);
          expect(b64(pb.Op.encode(opFromGoJson(json)).finish())).toBe(s);
        });
      });

      it('decodes definition_base64 to the same ops and metadata, and re-encodes it identically', () => {
        const bytes = Buffer.from(v.definition_base64, 'base64');
        const def = Definition.fromBytes(bytes);
        expect(def.def.map(b64)).toEqual(v.defs_base64);
        const md = Object.fromEntries([...def.metadata].map(([k, m]) => [k, metadataToGoJson(m)]));
        expect(md).toEqual(v.metadata);
        expect(b64(def.toBytes())).toBe(v.definition_base64);
        const loaded = parseDefinition(bytes);
        expect(loaded.order.length).toBe(v.defs_base64.length - 1);
      });

      it('builds the same graph with the builder API: identical bytes and digests', () => {
        const build = builders[v.name];
        expect(build, `no builder for vector ${v.name}`).toBeDefined();
        const { state, localUniqueId } = build!(localUnique(v));
        const def = marshal(state, {
          platform: LinuxAmd64,
          ...(localUniqueId ? { localUniqueId } : {}),
        });
        expect(def.def.map(b64)).toEqual(v.defs_base64);
        expect(def.digests()).toEqual(v.digests);
        expect(b64(def.toBytes())).toBe(v.definition_base64);
      });

      it('round-trips through dump-llb and marshal-llb byte for byte', () => {
        const bytes = Buffer.from(v.definition_base64, 'base64');
        const text = dumpLlb(bytes);
        expect(text.trim().split('\n')).toHaveLength(v.defs_base64.length);
        expect(b64(marshalLlb(text))).toBe(v.definition_base64);
      });
    });
  }
});
