#!/bin/sh
//bin/true; if [ -n "${NODE_EXTRA_CA_CERTS-}" ]; then KILN_DEFERRED_CA_CERTS=$NODE_EXTRA_CA_CERTS; export KILN_DEFERRED_CA_CERTS; unset NODE_EXTRA_CA_CERTS; fi; d=${0%/*}; [ -L "$0" ] && d=$(dirname "$(readlink -f "$0")"); [ -x "$d/../dist/kiln-launch" ] && exec "$d/../dist/kiln-launch" "$0" "$@"; exec node "$0" "$@"
// The two lines above are both shell and JavaScript: run as a command, /bin/sh executes them and
// starts the native launcher (cli/dist/kiln-launch, built by `npm run build`: it hands a
// `kiln build` to a warm client process when one waits, see cli/src/warm-client.ts, and
// otherwise starts Node on this file, as the line does without it); for Node they are comments.
// They keep
// NODE_EXTRA_CA_CERTS from Node's start: Node 20 reads the file it names, and parses its bundled
// root certificates, before any code runs (~100 ms per command on these machines, most of a
// cached build). The variable is put back below for child processes, and the one TLS connection
// the client makes adds the file's certificates then (libs/client `trustedCas`), as Node would
// have. `node kiln.js` works too, as before (and pays Node's load).
// The kiln command. `npm run build` at the repository root compiles the code to dist/ and bundles
// it into dist/bundle/main.cjs (one file to load instead of hundreds of modules: see
// scripts/bundle-cli.mjs). This compiles the bundle with a V8 code cache, Node 20 having none for
// ES modules: each process would otherwise spend ~100 ms compiling it.
// The cache is a file per (bundle content hash, written by the build; Node version; command) in a
// per-user directory ($KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln; used only
// if owned by the user and not writable by others). It is written after the command ran (so it holds the functions the
// command compiled), to a temporary file renamed into place. A missing, stale, corrupt or
// rejected cache only costs the compile; any error reading or writing it is ignored.
// This file is CommonJS (bin/package.json): an ES module entry would start Node's ES module loader
// and build namespaces of the builtins it imports (node:fs's touches its lazy getters, loading
// every stream class), ~10-20 ms of each command's start that a CommonJS entry never pays.
'use strict';
if (process.env.KILN_DEFERRED_CA_CERTS !== undefined) {
  process.env.NODE_EXTRA_CA_CERTS = process.env.KILN_DEFERRED_CA_CERTS;
  delete process.env.KILN_DEFERRED_CA_CERTS;
}
// Set by the launcher (a `kiln build` it could have handed to a warm client): leave one for the
// next command. Set by leaveWarmClient: this process is that warm client.
const launched = process.env.KILN_LAUNCH === '1';
const warm = process.env.KILN_WARM_SERVE === '1';
delete process.env.KILN_LAUNCH;
delete process.env.KILN_WARM_SERVE;
const fs = require('node:fs');
const { createRequire } = require('node:module');
const { homedir } = require('node:os');
const { dirname, join } = require('node:path');
const vm = require('node:vm');
const { createHash } = require('node:crypto');

const MAGIC = Buffer.from('KILNV8C1');
const SUM = 32; // sha256 of the payload, after MAGIC

const bundle = join(__dirname, '..', 'dist', 'bundle', 'main.cjs');
// ASCII (scripts/bundle-cli.mjs checks): latin1 makes the string without decoding UTF-8.
const source = fs.readFileSync(bundle, 'latin1');
const hashFile = `${bundle}.sha256`;
const cache = cacheFile(warm ? 'build' : commandName());
const cached = cache && readCache(cache);

const wrapper = `(function (exports, require, module, __filename, __dirname) {${source}\n})`;
const script = new vm.Script(wrapper, { filename: bundle, cachedData: cached });
const mod = { exports: {} };
script
  .runInThisContext()
  .call(mod.exports, mod.exports, createRequire(bundle), mod, bundle, dirname(bundle));
const done = () => {
  if (cache && (!cached || script.cachedDataRejected)) writeCache(cache);
};
if (warm) {
  void mod.exports.serveWarmClient({
    script: fs.realpathSync(__filename),
    hashFile,
    cacheDir: cache && cache.dir,
    preload: mod.exports.preloadBuild,
    main: mod.exports.main,
    done,
  });
} else {
  void mod.exports.main(process.argv).then((code) => {
    done();
    process.exitCode = code;
    if (launched) mod.exports.leaveWarmClient(fs.realpathSync(__filename));
  });
}

/** The first word that is not an option: `kiln build` and `kiln --version` compile different code. */
function commandName() {
  return (
    /^[a-z][a-z-]{0,20}$/.exec(process.argv.slice(2).find((a) => !a.startsWith('-')) ?? '')?.[0] ??
    '-'
  );
}

/** This bundle's cache file, or undefined when there is no safe per-user place for it. */
function cacheFile(command) {
  try {
    const env = process.env;
    const home =
      env.KILN_CACHE_DIR || join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'kiln');
    // Not `recursive`: Node 20's recursive mkdir spins forever on some paths (e.g. under /proc).
    for (const dir of [dirname(home), home]) {
      try {
        fs.mkdirSync(dir, { mode: 0o700 });
      } catch {
        // It exists, or cannot be made: the stat below decides.
      }
    }
    const st = fs.statSync(home);
    if (!st.isDirectory() || (st.mode & 0o022) !== 0) return undefined;
    if (process.getuid && st.uid !== process.getuid()) return undefined;
    // The bundle's hash (written by the build next to it) and its length: V8 checks the length.
    const hash = fs.readFileSync(hashFile, 'utf8').trim();
    if (!/^[0-9a-f]{64}$/.test(hash)) return undefined;
    const key = createHash('sha256')
      .update(
        `${hash}\0${source.length}\0${process.version}\0${process.arch}\0${process.execArgv.join(' ')}`,
      )
      .digest('hex')
      .slice(0, 32);
    return { dir: home, path: join(home, `cli-${key}-${command}.v8`), key };
  } catch {
    return undefined;
  }
}

function readCache(c) {
  try {
    const buf = fs.readFileSync(c.path);
    if (buf.length <= MAGIC.length + SUM || !buf.subarray(0, MAGIC.length).equals(MAGIC))
      return undefined;
    const data = buf.subarray(MAGIC.length + SUM);
    const sum = createHash('sha256').update(data).digest();
    return sum.equals(buf.subarray(MAGIC.length, MAGIC.length + SUM)) ? data : undefined;
  } catch {
    return undefined;
  }
}

function writeCache(c) {
  const tmp = `${c.path}.${process.pid}.tmp`;
  try {
    const data = script.createCachedData();
    const sum = createHash('sha256').update(data).digest();
    fs.writeFileSync(tmp, Buffer.concat([MAGIC, sum, data]), { mode: 0o600 });
    fs.renameSync(tmp, c.path);
    // Caches of other builds of the bundle (or Node versions) not written for an hour go.
    for (const name of fs.readdirSync(c.dir)) {
      if (!name.startsWith('cli-') || name.includes(c.key)) continue;
      const file = join(c.dir, name);
      if (Date.now() - fs.statSync(file).mtimeMs > 3600_000) fs.rmSync(file, { force: true });
    }
  } catch {
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      // A read-only directory: nothing was written.
    }
  }
}
