/**
 * Whether an ADD source is a git repository, and which (a subset of BuildKit's dfgitutil.ParseGitRef):
 * `git://`, `ssh://`, `git@host:path` and http(s) URLs whose path ends in `.git`, with a
 * `#ref[:subdir]` fragment or `?ref=...&subdir=...&keep-git-dir=...&checksum=...` query.
 * `github.com/org/repo` without a scheme is a local path, as in BuildKit.
 */
export interface GitRef {
  remote: string;
  ref: string;
  subDir: string;
  keepGitDir: boolean | undefined;
  checksum: string;
}

const SCP_LIKE = /^[A-Za-z0-9._-]+@[^:/]+:/;

/**
 * The git repository `src` names, or undefined. `forceHttp`: an http(s) URL is a repository even
 * without `.git` (ADD --keep-git-dir says so).
 */
export function parseGitRef(src: string, forceHttp = false): GitRef | undefined {
  let isGit = false;
  let rest = src;
  if (
    src.startsWith('git://') ||
    src.startsWith('ssh://') ||
    src.startsWith('git@') ||
    SCP_LIKE.test(src)
  )
    isGit = true;
  let fragment = '';
  const hash = rest.indexOf('#');
  if (hash >= 0) {
    fragment = rest.slice(hash + 1);
    rest = rest.slice(0, hash);
  }
  let query = '';
  if (rest.startsWith('http://') || rest.startsWith('https://')) {
    const q = rest.indexOf('?');
    if (q >= 0) {
      query = rest.slice(q + 1);
      rest = rest.slice(0, q);
    }
    const path = rest.replace(/^https?:\/\/[^/]*/, '');
    if (forceHttp || path.endsWith('.git') || path.endsWith('.git/')) isGit = true;
  } else if (isGit) {
    const q = rest.indexOf('?');
    if (q >= 0) {
      query = rest.slice(q + 1);
      rest = rest.slice(0, q);
    }
  }
  if (!isGit) return undefined;
  const out: GitRef = { remote: rest, ref: '', subDir: '', keepGitDir: undefined, checksum: '' };
  if (fragment !== '') {
    const colon = fragment.indexOf(':');
    out.ref = colon >= 0 ? fragment.slice(0, colon) : fragment;
    out.subDir = colon >= 0 ? fragment.slice(colon + 1) : '';
  }
  if (query !== '') {
    for (const [k, v] of new URLSearchParams(query)) {
      switch (k) {
        case 'ref':
        case 'tag':
        case 'branch':
          if (out.ref !== '' && out.ref !== v) throw new Error(`ref conflicts: ${out.ref} vs ${v}`);
          out.ref = v;
          break;
        case 'subdir':
          out.subDir = v;
          break;
        case 'keep-git-dir':
          out.keepGitDir = v === 'true' || v === '1';
          break;
        case 'checksum':
          out.checksum = v;
          break;
        default:
          throw new Error(`unexpected query ${JSON.stringify(k)}`);
      }
    }
  }
  return out;
}

export function isGitSource(src: string): boolean {
  try {
    return parseGitRef(src) !== undefined;
  } catch {
    // A malformed git URL is still a git source; the copy reports the error.
    return true;
  }
}

export function isHTTPSource(src: string): boolean {
  if (!src.startsWith('http://') && !src.startsWith('https://')) return false;
  return !isGitSource(src);
}
