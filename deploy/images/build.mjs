#!/usr/bin/env node
// Builds Kiln's service images with `kiln build` itself, multi-platform, from nothing but Debian's
// mirror (the one apt uses) and the npm registry. After `bash scripts/setup.sh && npm run build`:
//
//   node deploy/images/build.mjs [--platform linux/amd64,linux/arm64] [--images a,b,...]
//     [--registry HOST:PORT] [--tag T] [--docker-out DIR] [--check]
//
//   1. base: per architecture, `debootstrap --variant=minbase bookworm` into the cache (once),
//      trimmed (no apt lists, docs, man pages, locales) and packed as rootfs-<arch>.tar.gz; then
//      `kiln build` of debian/Dockerfile (FROM scratch, ADD the tarball) pushes
//      REGISTRY/kiln/debian:bookworm, one index over the platforms.
//   2. per architecture, node (this machine's for its own; npm's node-linux-<arch> package of the
//      same version for the other) and @kiln/sys's addon (cross-compiled by
//      <triple>-gcc for the other architecture); stage.mjs writes the contexts.
//   3. `kiln build --platform ... --build-arg BASE=REGISTRY/kiln/debian:bookworm` of each image,
//      pushed as REGISTRY/kiln/<image>:TAG; with --docker-out, also a `docker load`-able tarball
//      of this machine's platform, DIR/<image>.tar, tagged kiln/<image>:TAG.
//   4. --check: each pushed index has the platforms asked for, each config the user and
//      entrypoint its Dockerfile says, and node runs in every platform of every image (a
//      `kiln build` RUN in the image, the foreign one through qemu).
//
// The builds run on a local farm of their own (state in WORK/farm, stopped at the end): the
// machine's /var/lib/kiln is not touched. Without --registry, a docker-registry of its own is
// started on a free loopback port over CACHE/registry and stopped at the end (the images stay in
// that directory). Cache (the Debian roots, node, the addon): $KILN_IMAGES_CACHE, default
// /var/cache/kiln/images; work (contexts, the farm): --work DIR, default CACHE/work.
import { execFileSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRegistry } from '../../libs/testing/dist/registry.js';
import { IMAGES, nativeArch, stageImages } from './stage.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const KILN = join(root, 'cli/bin/kiln.js');
const MIRROR = 'http://deb.debian.org/debian';
const SUITE = 'bookworm';
const TRIPLE = { amd64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu' };
const NPM_ARCH = { amd64: 'x64', arm64: 'arm64' };
/** What each image's config must say (--check): Dockerfile USER and ENTRYPOINT. */
export const EXPECT = {
  scheduler: {
    user: '65534:65534',
    entrypoint: ['/usr/local/bin/node', '/opt/kiln/kiln-scheduler.mjs'],
  },
  worker: { user: '', entrypoint: ['/usr/local/bin/node', '/opt/kiln/kiln-worker.mjs'] },
  'cache-store': {
    user: '65534:65534',
    entrypoint: ['/usr/local/bin/node', '/opt/kiln/kiln-cache-store.mjs'],
  },
  cli: { user: '65534:65534', entrypoint: ['/usr/local/bin/node', '/opt/kiln/kiln.mjs'] },
  nats: { user: '65534:65534', entrypoint: ['/usr/sbin/nats-server'] },
  s3rver: { user: '65534:65534', entrypoint: ['/usr/local/bin/node', '/opt/kiln/s3rver.mjs'] },
};

const log = (msg) => process.stderr.write(`[images] ${msg}\n`);

function usage(code) {
  process.stderr.write(
    'usage: node deploy/images/build.mjs [--platform linux/amd64,linux/arm64] [--images a,b]\n' +
      '         [--registry HOST:PORT] [--tag T] [--docker-out DIR] [--check]\n' +
      `images: ${Object.keys(IMAGES).join(', ')} (default: all)\n`,
  );
  process.exit(code);
}

export function parseArgs(argv) {
  const o = {
    platforms: ['linux/amd64', 'linux/arm64'],
    images: Object.keys(IMAGES),
    registry: undefined,
    tag: 'latest',
    dockerOut: undefined,
    check: false,
    cache: process.env.KILN_IMAGES_CACHE || '/var/cache/kiln/images',
    work: undefined,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (!v) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--platform') o.platforms = val().split(',');
    else if (a === '--images') o.images = val().split(',');
    else if (a === '--registry') o.registry = val();
    else if (a === '--tag') o.tag = val();
    else if (a === '--docker-out') o.dockerOut = resolve(val());
    else if (a === '--check') o.check = true;
    else if (a === '--work') o.work = resolve(val());
    else if (a === '-h' || a === '--help') usage(0);
    else throw new Error(`unknown argument ${a}`);
  }
  for (const p of o.platforms)
    if (!/^linux\/(amd64|arm64)$/.test(p)) throw new Error(`unsupported platform ${p}`);
  for (const i of o.images) if (!IMAGES[i]) throw new Error(`unknown image ${i}`);
  o.work ??= join(o.cache, 'work');
  return o;
}

function run(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], ...opts });
}

// ---- 1. the Debian base ----------------------------------------------------------------------

/** CACHE/rootfs-<arch>.tar.gz, made once: debootstrap, trim, tar (numeric owners, no /dev). */
export function debianRootfs(cache, arch) {
  const tarball = join(cache, `rootfs-${arch}.tar.gz`);
  if (existsSync(tarball)) return tarball;
  const dir = join(cache, `rootfs-${arch}.tmp`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(cache, { recursive: true });
  log(`debootstrap --variant=minbase --arch=${arch} ${SUITE} (${MIRROR})`);
  run('debootstrap', ['--variant=minbase', `--arch=${arch}`, SUITE, dir, MIRROR], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  packRootfs(dir, tarball);
  rmSync(dir, { recursive: true, force: true });
  return tarball;
}

/** Trims a debootstrapped root (`dir`, changed in place) and packs it into `tarball`. */
export function packRootfs(dir, tarball) {
  // Small: what apt fetched, docs, manuals and translations go; apt itself stays (the worker and
  // nats images install from Debian).
  for (const p of [
    'var/cache/apt/archives',
    'var/cache/apt/pkgcache.bin',
    'var/cache/apt/srcpkgcache.bin',
    'var/lib/apt/lists',
    'usr/share/doc',
    'usr/share/man',
    'usr/share/info',
    'usr/share/locale',
    'var/log',
  ])
    rmSync(join(dir, p), { recursive: true, force: true });
  for (const p of ['var/lib/apt/lists/partial', 'var/cache/apt/archives/partial', 'var/log'])
    mkdirSync(join(dir, p), { recursive: true });
  // Debian's docker images keep no package docs either: dpkg skips them on later installs.
  mkdirSync(join(dir, 'etc/dpkg/dpkg.cfg.d'), { recursive: true });
  writeFileSync(
    join(dir, 'etc/dpkg/dpkg.cfg.d/kiln-excludes'),
    'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n' +
      'path-exclude /usr/share/locale/*\n',
  );
  writeFileSync(
    join(dir, 'etc/apt/apt.conf.d/kiln-no-recommends'),
    'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n',
  );
  const tmp = `${tarball}.tmp`;
  run('tar', [
    '--numeric-owner',
    '--sort=name',
    '--mtime=@0',
    '--exclude=./dev/*',
    '--exclude=./proc/*',
    '--exclude=./sys/*',
    '-C',
    dir,
    '-czf',
    tmp,
    '.',
  ]);
  renameSync(tmp, tarball);
}

// ---- 2. node and the addon per architecture --------------------------------------------------

/** This machine's node for its own architecture; npm's node-linux-<arch> of the same version. */
export function nodeBinary(cache, arch) {
  if (arch === nativeArch()) return process.execPath;
  const version = process.version.slice(1);
  const dir = join(cache, `node-${arch}-${version}`);
  const bin = join(dir, 'package/bin/node');
  if (existsSync(bin)) return bin;
  mkdirSync(dir, { recursive: true });
  log(`npm pack node-linux-${NPM_ARCH[arch]}@${version}`);
  const name = run('npm', ['pack', '--silent', `node-linux-${NPM_ARCH[arch]}@${version}`], {
    cwd: dir,
  })
    .toString()
    .trim()
    .split('\n')
    .pop();
  run('tar', ['-xzf', join(dir, name), '-C', dir, 'package/bin/node']);
  rmSync(join(dir, name));
  return bin;
}

/** The native addon for `arch`: the tree's own, or cross-compiled with <triple>-gcc. */
export function addon(cache, arch) {
  if (arch === nativeArch()) return join(root, 'libs/sys/build/kiln_sys.node');
  const out = join(cache, `kiln_sys-${arch}.node`);
  const cc = `${TRIPLE[arch]}-gcc`;
  run(process.execPath, [join(root, 'libs/sys/scripts/build-native.mjs'), '--out', out], {
    env: { ...process.env, CC: cc },
  });
  return out;
}

// ---- 3. kiln build ---------------------------------------------------------------------------

export function kilnEnv(work) {
  return { ...process.env, KILN_STATE_DIR: join(work, 'farm') };
}

/** One `kiln build`; its progress goes to stderr. */
export function kilnBuild(work, args) {
  log(`kiln build ${args.join(' ')}`);
  run(process.execPath, [KILN, 'build', '--progress', 'plain', ...args], {
    env: kilnEnv(work),
    stdio: ['ignore', 'inherit', 'inherit'],
  });
}

export function stopFarm(work) {
  try {
    run(process.execPath, [KILN, 'farm', 'stop'], { env: kilnEnv(work), stdio: 'ignore' });
  } catch (err) {
    log(`kiln farm stop (${join(work, 'farm')}) failed: ${err.message}`);
  }
}

// ---- 4. --check ------------------------------------------------------------------------------

async function getJson(url, accept) {
  const res = await fetch(url, { headers: { accept } });
  if (!res.ok) throw new Error(`GET ${url}: ${res.status}`);
  return res.json();
}

const MANIFEST_TYPES = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

/** The pushed image's platforms and, per platform, its config (an index, or one manifest). */
export async function inspect(registry, repo, tag) {
  const base = `http://${registry}/v2/${repo}`;
  const top = await getJson(`${base}/manifests/${tag}`, MANIFEST_TYPES);
  const manifests = Array.isArray(top.manifests)
    ? await Promise.all(
        top.manifests.map((m) => getJson(`${base}/manifests/${m.digest}`, m.mediaType)),
      )
    : [top];
  const out = {};
  for (const manifest of manifests) {
    const config = await getJson(`${base}/blobs/${manifest.config.digest}`, '*/*');
    const layers = manifest.layers.reduce((n, l) => n + l.size, 0);
    out[`${config.os}/${config.architecture}`] = { config, layers };
  }
  return out;
}

async function check(o, registry, work) {
  const problems = [];
  for (const image of o.images) {
    const ref = `${registry}/kiln/${image}:${o.tag}`;
    const got = await inspect(registry, `kiln/${image}`, o.tag);
    const platforms = Object.keys(got).sort();
    if (platforms.join() !== [...o.platforms].sort().join())
      problems.push(`${ref}: platforms ${platforms.join()} (want ${o.platforms.join()})`);
    for (const [p, { config, layers }] of Object.entries(got)) {
      const want = EXPECT[image];
      const c = config.config ?? {};
      if ((c.User ?? '') !== want.user) problems.push(`${ref} ${p}: user '${c.User ?? ''}'`);
      if (JSON.stringify(c.Entrypoint) !== JSON.stringify(want.entrypoint))
        problems.push(`${ref} ${p}: entrypoint ${JSON.stringify(c.Entrypoint)}`);
      log(`${ref} ${p}: user '${c.User ?? ''}', ${(layers / 1e6).toFixed(1)} MB compressed`);
    }
    // The image's own program runs on every platform (RUN as the image's user).
    const probe = join(work, 'probe', image);
    mkdirSync(probe, { recursive: true });
    const cmd =
      image === 'nats'
        ? '/usr/sbin/nats-server --version > /tmp/probe'
        : '/usr/local/bin/node -e "console.log(process.arch, process.version)" > /tmp/probe';
    writeFileSync(
      join(probe, 'Dockerfile'),
      `FROM ${ref} AS img\nRUN ${cmd}\nFROM scratch\nCOPY --from=img /tmp/probe /probe\n`,
    );
    const dest = join(probe, 'out');
    rmSync(dest, { recursive: true, force: true });
    kilnBuild(o.work, [
      '--no-cache',
      '--platform',
      o.platforms.join(','),
      '-o',
      `type=local,dest=${dest}`,
      probe,
    ]);
    for (const p of o.platforms) {
      const file =
        o.platforms.length > 1 ? join(dest, p.replace('/', '_'), 'probe') : join(dest, 'probe');
      const text = existsSync(file) ? readFileSync(file, 'utf8').trim() : '(no output)';
      log(`${ref} ${p} runs: ${text}`);
      const arch = p.split('/')[1];
      if (image !== 'nats' && !text.startsWith(`${NPM_ARCH[arch]} v`))
        problems.push(`${ref} ${p}: node printed '${text}'`);
      if (image === 'nats' && !/nats-server: v2\./.test(text))
        problems.push(`${ref} ${p}: nats-server printed '${text}'`);
    }
  }
  return problems;
}

// ---- main ------------------------------------------------------------------------------------

export async function buildImages(o) {
  const arches = o.platforms.map((p) => p.split('/')[1]);
  mkdirSync(o.cache, { recursive: true });
  const work = o.work;
  const reg = o.registry
    ? { addr: o.registry, stop: async () => {} }
    : await startRegistry({ storageDir: join(o.cache, 'registry') });
  try {
    log(`registry ${reg.addr}`);
    const baseCtx = join(work, 'debian');
    mkdirSync(baseCtx, { recursive: true });
    copyFileSync(join(here, 'debian/Dockerfile'), join(baseCtx, 'Dockerfile'));
    for (const arch of arches) {
      const t = debianRootfs(o.cache, arch);
      const to = join(baseCtx, `rootfs-${arch}.tar.gz`);
      if (!existsSync(to)) copyFileSync(t, to);
    }
    const base = `${reg.addr}/kiln/debian:${SUITE}`;
    kilnBuild(o.work, [
      '--platform',
      o.platforms.join(','),
      '-o',
      `type=image,name=${base},push=true`,
      baseCtx,
    ]);

    const files = Object.fromEntries(
      arches.map((a) => [a, { node: nodeBinary(o.cache, a), addon: addon(o.cache, a) }]),
    );
    const dirs = await stageImages(join(work, 'ctx'), o.images, files);
    for (const image of o.images) {
      const ref = `${reg.addr}/kiln/${image}:${o.tag}`;
      const common = ['--build-arg', `BASE=${base}`];
      kilnBuild(o.work, [
        ...common,
        '--platform',
        o.platforms.join(','),
        '-o',
        `type=image,name=${ref},push=true`,
        dirs[image],
      ]);
      if (o.dockerOut) {
        mkdirSync(o.dockerOut, { recursive: true });
        const native = `linux/${nativeArch()}`;
        kilnBuild(o.work, [
          ...common,
          '--platform',
          native,
          '-t',
          `kiln/${image}:${o.tag}`,
          '-o',
          `type=docker,dest=${join(o.dockerOut, `${image}.tar`)}`,
          dirs[image],
        ]);
      }
    }
    if (o.check) {
      const problems = await check(o, reg.addr, work);
      if (problems.length > 0) throw new Error(`check failed:\n  ${problems.join('\n  ')}`);
      log('check ok');
    }
    return { registry: reg.addr };
  } finally {
    stopFarm(work);
    await reg.stop();
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    await buildImages(parseArgs(process.argv.slice(2)));
  } catch (err) {
    process.stderr.write(`[images] ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
}
