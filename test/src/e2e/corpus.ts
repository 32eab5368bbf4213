/**
 * The Dockerfile corpus (test/corpus): each case is a directory with a Dockerfile, its context and
 * expect.json (what the output tree and image config must hold, or which error on which line).
 * Shared by the suites that build it: the corpus suite checks each case's expectations; the
 * rootless suite builds every case on a root, a rootless and a remapped worker and compares their
 * outputs entry by entry.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cp, lstat, mkdir, readFile, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';

const run = promisify(execFile);

export const corpusDir = resolve(dirname(fileURLToPath(import.meta.url)), '../../corpus');

export interface FileExpect {
  absent?: boolean;
  type?: 'file' | 'dir' | 'symlink';
  content?: string;
  mode?: string;
  uid?: number;
  gid?: number;
  target?: string;
}

export interface CaseExpect {
  buildArgs?: Record<string, string>;
  target?: string;
  platform?: string;
  secrets?: Record<string, string>;
  ssh?: boolean;
  generate?: { dir: string; count: number };
  files?: Record<string, FileExpect>;
  config?: Record<string, unknown>;
  author?: string;
  absentEverywhere?: string[];
  layerWhiteouts?: string[];
  error?: { match: string; line?: number };
}

/** The corpus cases' names, sorted. */
export async function corpusCases(): Promise<string[]> {
  return (await readdir(corpusDir, { withFileTypes: true }))
    .filter((d) => d.isDirectory())
    .map((d) => d.name)
    .sort();
}

/** A case made ready to build: its context, expectations and `kiln build` arguments. */
export interface PreparedCase {
  exp: CaseExpect;
  ctx: string;
  /** `build CTX --progress plain --build-arg BASE=...` and the case's own flags; no outputs. */
  args: string[];
}

/**
 * Copies case `name` into `work/ctx` (with the files expect.json says to generate, and its
 * secrets written under `work`) and returns the `kiln build` arguments it needs; `sshSock` is the
 * agent socket a case with `ssh` forwards.
 */
export async function prepareCase(
  name: string,
  work: string,
  o: { base: string; sshSock: string },
): Promise<PreparedCase> {
  const exp = JSON.parse(
    await readFile(join(corpusDir, name, 'expect.json'), 'utf8'),
  ) as CaseExpect;
  const ctx = join(work, 'ctx');
  await rm(ctx, { recursive: true, force: true });
  await cp(join(corpusDir, name), ctx, { recursive: true });
  await rm(join(ctx, 'expect.json'));
  if (exp.generate) {
    await mkdir(join(ctx, exp.generate.dir), { recursive: true });
    for (let i = 0; i < exp.generate.count; i++) {
      const sub = join(ctx, exp.generate.dir, `d${i % 20}`);
      await mkdir(sub, { recursive: true });
      await writeFile(join(sub, `f${i}.txt`), `file ${i}\n`);
    }
  }
  const args = ['build', ctx, '--progress', 'plain', '--build-arg', `BASE=${o.base}`];
  for (const [k, v] of Object.entries(exp.buildArgs ?? {})) args.push('--build-arg', `${k}=${v}`);
  if (exp.target) args.push('--target', exp.target);
  if (exp.platform) args.push('--platform', exp.platform);
  for (const [id, value] of Object.entries(exp.secrets ?? {})) {
    const f = join(work, `secret-${id}`);
    await writeFile(f, value);
    args.push('--secret', `id=${id},src=${f}`);
  }
  if (exp.ssh) args.push('--ssh', `default=${o.sshSock}`);
  return { exp, ctx, args };
}

/**
 * Every entry under `dir` as `type path mode uid:gid sha256(content) -> link`, sorted: what a
 * local export holds, without modification times.
 */
export async function treeEntries(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(dir, rel), { withFileTypes: true })) {
      const r = rel === '' ? e.name : `${rel}/${e.name}`;
      const p = join(dir, r);
      const st = await lstat(p);
      const owner = `${st.mode.toString(8)} ${st.uid}:${st.gid}`;
      if (st.isDirectory()) {
        out.push(`d ${r} ${owner}`);
        await walk(r);
      } else if (st.isSymbolicLink()) out.push(`l ${r} ${owner} -> ${await readlink(p)}`);
      else if (st.isFile()) out.push(`f ${r} ${owner} ${sha16(await readFile(p))}`);
      else out.push(`? ${r} ${owner} rdev ${st.rdev}`);
    }
  };
  await walk('');
  return out.sort();
}

const sha16 = (b: Buffer): string => createHash('sha256').update(b).digest('hex').slice(0, 16);

/**
 * Every entry of an uncompressed tar as `type name mode uid:gid sha256(content) -> link`: what an
 * image's layer says about its files, without the modification times (each build has its own).
 */
export function tarEntries(tar: Buffer): string[] {
  const out: string[] = [];
  const str = (b: Buffer): string => b.toString('utf8').replace(/\0.*$/s, '');
  const oct = (b: Buffer): number => parseInt(str(b).trim() || '0', 8);
  let longName: string | undefined;
  for (let off = 0; off + 512 <= tar.length;) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const size = oct(h.subarray(124, 136));
    const type = String.fromCharCode(h[156] || 48);
    const body = tar.subarray(off + 512, off + 512 + size);
    off += 512 + Math.ceil(size / 512) * 512;
    if (type === 'x') {
      // PAX: only `path` matters here (mtimes are not compared).
      longName = /\d+ path=([^\n]*)\n/.exec(body.toString('utf8'))?.[1];
      continue;
    }
    const prefix = str(h.subarray(345, 500));
    const name = longName ?? (prefix ? `${prefix}/` : '') + str(h.subarray(0, 100));
    longName = undefined;
    out.push(
      `${type} ${name} ${oct(h.subarray(100, 108)).toString(8)} ${oct(h.subarray(108, 116))}:${oct(h.subarray(116, 124))} ${sha16(body)} -> ${str(h.subarray(157, 257))}`,
    );
  }
  return out;
}

/** An image as compared across workers: its config without dates, and its layers' entries. */
export interface ComparableImage {
  config: unknown;
  layers: string[][];
}

/**
 * The first image of an OCI tarball a build exported (unpacked into `into`): its config and its
 * layers, uncompressed.
 */
export async function readOci(
  tarFile: string,
  into: string,
): Promise<{ config: unknown; layers: Buffer[] }> {
  await mkdir(into, { recursive: true });
  await run('tar', ['-xf', tarFile, '-C', into]);
  const blob = (d: string): Promise<Buffer> =>
    readFile(join(into, 'blobs/sha256', d.slice('sha256:'.length)));
  const index = JSON.parse(await readFile(join(into, 'index.json'), 'utf8')) as {
    manifests: { digest: string }[];
  };
  const manifest = JSON.parse((await blob(index.manifests[0]!.digest)).toString()) as {
    config: { digest: string };
    layers: { digest: string }[];
  };
  const config = JSON.parse((await blob(manifest.config.digest)).toString()) as unknown;
  const layers = await Promise.all(
    manifest.layers.map(async (l) => gunzipSync(await blob(l.digest))),
  );
  return { config, layers };
}

/** The image a build exported as an OCI tarball (unpacked beside it, in `${tarFile}.d`). */
export async function readImage(tarFile: string): Promise<ComparableImage> {
  const oci = await readOci(tarFile, `${tarFile}.d`);
  const config = oci.config as {
    created?: string;
    history?: { created?: string }[];
    rootfs?: { diff_ids?: string[] };
  };
  // Dates, and the layers' digests (their files' mtimes are the build's): compared entry by entry.
  delete config.created;
  for (const h of config.history ?? []) delete h.created;
  delete config.rootfs?.diff_ids;
  return { config, layers: oci.layers.map(tarEntries) };
}
