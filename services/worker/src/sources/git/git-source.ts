/**
 * The `git://` source (BuildKit's source/git), through the git CLI: the identifier is
 * `git://<remote>[#<ref>[:<subdir>]]`, the remote to fetch is the `git.fullurl` attribute (else
 * derived from the identifier). The cache pin is the commit the ref resolves to (`git ls-remote`;
 * a full commit id pins itself). The result is that commit's tree (or its `subdir`), without
 * `.git` unless `git.keepgitdir` is set. Fetches are shallow; submodules are not fetched.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { KilnError, withCleanup } from '@kiln/protocol';
import type { pb } from '@kiln/protocol';
import { copyPath } from '../../fs/index.js';

const run = promisify(execFile);

export class GitSourceError extends KilnError {
  constructor(
    code: 'GIT_FAILED' | 'GIT_REF_NOT_FOUND' | 'GIT_INVALID',
    message: string,
    remote: string,
    opts: { retryable?: boolean; cause?: unknown } = {},
  ) {
    super(code, message, { ...opts, details: { remote } });
  }
}

export interface GitSpec {
  remote: string;
  ref: string;
  subdir: string;
  keepGitDir: boolean;
}

export function gitSpec(op: pb.ISourceOp): GitSpec {
  const id = (op.identifier ?? '').slice('git://'.length);
  const hash = id.indexOf('#');
  const fragment = hash >= 0 ? id.slice(hash + 1) : '';
  const colon = fragment.indexOf(':');
  const ref = colon >= 0 ? fragment.slice(0, colon) : fragment;
  const subdir = colon >= 0 ? fragment.slice(colon + 1) : '';
  const attrs = op.attrs ?? {};
  const remote = attrs['git.fullurl'] || `https://${hash >= 0 ? id.slice(0, hash) : id}`;
  if (subdir.split('/').includes('..'))
    throw new GitSourceError('GIT_INVALID', `invalid subdir ${subdir}`, remote);
  return { remote, ref, subdir, keepGitDir: attrs['git.keepgitdir'] === 'true' };
}

const GIT_ENV = { ...process.env, GIT_TERMINAL_PROMPT: '0', GIT_CONFIG_NOSYSTEM: '1', LC_ALL: 'C' };

async function git(args: string[], remote: string, cwd?: string): Promise<string> {
  try {
    const { stdout } = await run('git', args, { cwd, env: GIT_ENV, maxBuffer: 16 << 20 });
    return stdout;
  } catch (cause) {
    const stderr = ((cause as { stderr?: string }).stderr ?? '')
      .trim()
      .split('\n')
      .slice(-3)
      .join('; ');
    // Redact credentials that may be embedded in the URL.
    const msg = `git ${args[0]} ${remote.replace(/\/\/[^@/]*@/, '//***@')}: ${stderr || (cause as Error).message}`;
    throw new GitSourceError('GIT_FAILED', msg, remote, { retryable: true, cause });
  }
}

/** Resolves the spec's ref to a commit id. */
export async function gitPin(spec: GitSpec): Promise<string> {
  if (/^[0-9a-f]{40}$/.test(spec.ref)) return spec.ref;
  const ref = spec.ref || 'HEAD';
  const out = await git(['ls-remote', spec.remote, ref, `refs/tags/${ref}^{}`], spec.remote);
  const lines = out
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split('\t') as [string, string]);
  // An annotated tag's peeled commit wins over the tag object.
  const peeled = lines.find(([, name]) => name.endsWith('^{}'));
  const exact = lines.find(
    ([, name]) => name === ref || name === `refs/heads/${ref}` || name === `refs/tags/${ref}`,
  );
  const hit = peeled ?? exact ?? lines[0];
  if (!hit)
    throw new GitSourceError(
      'GIT_REF_NOT_FOUND',
      `ref ${ref} not found in ${spec.remote.replace(/\/\/[^@/]*@/, '//***@')}`,
      spec.remote,
    );
  return hit[0];
}

/** Checks out `commit` of the spec into `dest` (an empty snapshot dir). */
export async function checkoutGit(
  spec: GitSpec,
  commit: string,
  dest: string,
  scratch: string,
): Promise<void> {
  await mkdir(scratch, { recursive: true });
  const work = join(scratch, `git-${randomUUID()}`);
  // A failed fetch or checkout is what is reported, not a scratch dir that could not go.
  await withCleanup(
    async () => {
      await git(['init', '-q', work], spec.remote);
      const ref = spec.ref || 'HEAD';
      await git(
        [
          '-C',
          work,
          'fetch',
          '-q',
          '--depth=1',
          '--no-tags',
          spec.remote,
          /^[0-9a-f]{40}$/.test(ref) ? ref : ref,
        ],
        spec.remote,
      );
      const head = (
        await git(['-C', work, 'rev-parse', 'FETCH_HEAD^{commit}'], spec.remote)
      ).trim();
      if (head !== commit) {
        throw new GitSourceError(
          'GIT_FAILED',
          `ref ${ref} moved while building (${commit} -> ${head})`,
          spec.remote,
          { retryable: true },
        );
      }
      await git(
        ['-C', work, '-c', 'advice.detachedHead=false', 'checkout', '-q', commit],
        spec.remote,
      );
      if (!spec.keepGitDir) await rm(join(work, '.git'), { recursive: true, force: true });
      await copyPath(work, spec.subdir ? `/${spec.subdir}` : '/', dest, '/', {
        copyDirContents: true,
      });
    },
    () => rm(work, { recursive: true, force: true }),
  );
}
