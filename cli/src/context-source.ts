/**
 * Where `kiln build`'s context and Dockerfile come from, as in `docker buildx build`: a directory;
 * `-` (a tar, plain or gzipped, on stdin; or a Dockerfile alone on stdin, with an empty context);
 * a git URL (`https://host/repo.git#ref:subdir`, `git://...`, `git@host:repo#ref`), cloned here
 * with the user's `git` and credentials; and `-f -` (the Dockerfile on stdin). A stdin tar or a
 * clone lives in a temporary directory removed by `cleanup()`.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import { parseGitRef } from '@kiln/dockerfile/git-ref';
import { BuildOptionError } from './build-options.js';

const run = promisify(execFile);

export interface BuildContext {
  /** The context directory served to the build. */
  dir: string;
  dockerfile: Buffer;
  /** The Dockerfile's path on this machine, for `<Dockerfile>.dockerignore`; none from stdin. */
  dockerfilePath: string | undefined;
  cleanup(): Promise<void>;
}

/** All of stdin (read once: `-` and `-f -` cannot both use it). */
async function readStdin(stdin: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stdin) parts.push(Buffer.from(c as Buffer));
  return Buffer.concat(parts);
}

const isTar = (b: Buffer): boolean =>
  b.length >= 512 && b.subarray(257, 262).toString('latin1') === 'ustar';

export async function buildContext(
  context: string,
  file: string | undefined,
  // A getter: reading process.stdin makes its stream (loading the tty or net code), which a
  // build of a directory never needs.
  stdin: () => Readable = () => process.stdin,
): Promise<BuildContext> {
  if (context === '-' && file === '-')
    throw new BuildOptionError('the context and the Dockerfile cannot both be read from stdin (-)');
  const temps: string[] = [];
  const cleanup = async (): Promise<void> => {
    await Promise.all(temps.map((d) => rm(d, { recursive: true, force: true })));
  };
  const temp = async (what: string): Promise<string> => {
    const d = await mkdtemp(join(tmpdir(), `kiln-${what}-`));
    temps.push(d);
    return d;
  };
  try {
    let dir: string;
    let fromStdin: Buffer | undefined;
    if (context === '-') {
      let data = await readStdin(stdin());
      if (data[0] === 0x1f && data[1] === 0x8b) data = gunzipSync(data);
      dir = await temp('context');
      if (isTar(data)) {
        const { applyTar } = await import('@kiln/layers');
        await applyTar(Readable.from([data]), dir, { whiteouts: false });
      } else fromStdin = data; // a Dockerfile alone: an empty context, as docker build -
    } else {
      const git = gitContext(context);
      dir = git ? await clone(git, await temp('git')) : resolve(context);
      await stat(dir).then(
        (st) => {
          if (!st.isDirectory()) throw new BuildOptionError(`context ${context}: not a directory`);
        },
        (cause: NodeJS.ErrnoException) => {
          throw new BuildOptionError(
            cause.code === 'ENOENT'
              ? `context directory ${context} does not exist`
              : `context ${context}: ${cause.code ?? String(cause)}`,
          );
        },
      );
    }
    if (file === '-' || (file === undefined && fromStdin))
      return {
        dir,
        dockerfile: fromStdin ?? (await readStdin(stdin())),
        dockerfilePath: undefined,
        cleanup,
      };
    // A relative -f is the user's path; a git or stdin context's Dockerfile is inside it.
    const dockerfilePath = file ? resolve(file) : join(dir, 'Dockerfile');
    const dockerfile = await readFile(dockerfilePath).catch((cause: NodeJS.ErrnoException) => {
      throw new BuildOptionError(
        `cannot read Dockerfile ${file ?? 'Dockerfile'}${file ? '' : ` in the context ${context}`}: ${cause.code ?? String(cause)}`,
      );
    });
    return { dir, dockerfile, dockerfilePath, cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

interface GitContext {
  remote: string;
  ref: string;
  subDir: string;
}

/** A git URL context, as buildx tells one from a path: a URL, never a local directory name. */
function gitContext(context: string): GitContext | undefined {
  if (!/^(https?:\/\/|git:\/\/|ssh:\/\/|git@|[A-Za-z0-9._-]+@[^:/]+:)/.test(context)) return;
  let g;
  try {
    g = parseGitRef(context);
  } catch (e) {
    throw new BuildOptionError(`context ${context}: ${(e as Error).message}`);
  }
  if (!g) {
    if (/^https?:\/\//.test(context))
      throw new BuildOptionError(
        `context ${context}: a URL context must be a git repository (…/repo.git#ref:subdir)`,
      );
    return undefined;
  }
  return { remote: g.remote, ref: g.ref, subDir: g.subDir };
}

/** Clones the repository at its ref (default branch when none) without its .git; returns the subdir. */
async function clone(g: GitContext, into: string): Promise<string> {
  const env = { ...process.env, GIT_TERMINAL_PROMPT: '0' };
  const git = async (args: string[], cwd?: string): Promise<void> => {
    try {
      await run('git', args, { cwd, env });
    } catch (e) {
      const err = e as { stderr?: string; code?: string; message: string };
      const why = err.code === 'ENOENT' ? 'git is not installed' : (err.stderr ?? err.message);
      throw new BuildOptionError(
        `git context ${g.remote}${g.ref ? `#${g.ref}` : ''}: ${why.trim().split('\n').slice(-2).join(' ')}`,
      );
    }
  };
  const dir = join(into, 'repo');
  await git(['clone', '--quiet', '--no-checkout', '--', g.remote, dir]);
  // A branch is origin/<ref> in the clone; a tag or commit is itself.
  let commit = 'HEAD';
  if (g.ref) {
    commit = g.ref;
    for (const c of [`refs/remotes/origin/${g.ref}`, g.ref]) {
      const ok = await run('git', ['rev-parse', '--verify', '--quiet', `${c}^{commit}`], {
        cwd: dir,
        env,
      }).then(
        () => true,
        () => false,
      );
      if (ok) {
        commit = c;
        break;
      }
    }
  }
  await git(['checkout', '--quiet', '--detach', commit, '--'], dir);
  await git(['submodule', 'update', '--quiet', '--init', '--recursive'], dir);
  // BuildKit's git source leaves the .git directory out unless asked to keep it.
  await rm(join(dir, '.git'), { recursive: true, force: true });
  const sub = g.subDir.replace(/^\/+/, '');
  if (sub.split('/').includes('..'))
    throw new BuildOptionError(`git context ${g.remote}: subdir ${g.subDir} leaves the repository`);
  return sub ? join(dir, sub) : dir;
}
