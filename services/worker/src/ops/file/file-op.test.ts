import { execFile } from 'node:child_process';
import {
  chmod,
  lchown,
  link,
  lstat,
  mkdir,
  readFile,
  readdir,
  readlink,
  rm,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { Long, pb } from '@kiln/protocol';
import * as tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { makeSandbox } from '@kiln/testing';
import type { Sandbox } from '@kiln/testing';
import { executeFileOp } from './execute.js';
import { FileOpError, FileOpErrorCode } from './errors.js';
import { copyingMutable } from './mutable.js';

const exec = promisify(execFile);

let sandbox: Sandbox;
let base: string;
let in0: string;
let in1: string;
let scratch: string;

beforeEach(async () => {
  sandbox = await makeSandbox('fileop', ['in0', 'in1', 'scratch']);
  base = sandbox.base;
  in0 = join(base, 'in0');
  in1 = join(base, 'in1');
  scratch = join(base, 'scratch');
});

afterEach(async () => {
  // Nothing outside the roots was created, changed or removed.
  await sandbox.assertUntouched();
  sandbox.remove();
});

const T1 = new Date('2021-02-03T04:05:06Z');
const ns = (d: Date): number => d.getTime() * 1_000_000;

function cp(src: string, dest: string, o: Partial<pb.IFileActionCopy> = {}): pb.IFileActionCopy {
  return { src, dest, mode: -1, timestamp: -1, ...o };
}

/** One action; `input`/`secondary` are indices (op inputs first, then earlier actions' results). */
function act(
  a: Omit<pb.IFileAction, 'input' | 'secondaryInput' | 'output'>,
  input: number,
  secondary = -1,
  output = -1,
): pb.IFileAction {
  return { ...a, input, secondaryInput: secondary, output };
}

async function run(
  actions: pb.IFileAction[],
  inputs: (string | undefined)[] = [in0, in1],
): Promise<string> {
  if (!actions.some((a) => Number(a.output) >= 0)) actions[actions.length - 1]!.output = 0;
  const { outputs } = await executeFileOp({ actions }, inputs, copyingMutable(scratch));
  return outputs[0]!;
}

async function failure(
  actions: pb.IFileAction[],
  inputs?: (string | undefined)[],
): Promise<FileOpError> {
  const err = await run(actions, inputs).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(FileOpError);
  return err as FileOpError;
}

async function meta(p: string): Promise<[number, number, number, number]> {
  const st = await lstat(p);
  return [st.mode & 0o7777, st.uid, st.gid, st.mtime.getTime()];
}

const byID = (uid: number, gid?: number): pb.IChownOpt => ({
  user: { byID: uid },
  ...(gid !== undefined ? { group: { byID: gid } } : {}),
});

describe('mkdir, mkfile, rm, symlink', () => {
  it('mkdir with parents, mode (as buildkitd: umask 0), owner and timestamp', async () => {
    const out = await run([
      act(
        {
          mkdir: {
            path: '/a/b/c',
            mode: 0o777,
            makeParents: true,
            owner: byID(1000, 1001),
            timestamp: ns(T1),
          },
        },
        -1,
      ),
    ]);
    expect(await meta(join(out, 'a/b/c'))).toEqual([0o777, 1000, 1001, T1.getTime()]);
    expect(await meta(join(out, 'a'))).toEqual([0o777, 1000, 1001, T1.getTime()]);
  });

  it('mkdir without parents needs the parent; an existing path is fine', async () => {
    await mkdir(join(in0, 'x'));
    const out = await run([
      act({ mkdir: { path: '/x', mode: 0o700, timestamp: -1 } }, 0),
      act({ mkdir: { path: '/y', mode: 0o700, timestamp: -1 } }, 2),
    ]);
    expect((await lstat(join(out, 'y'))).mode & 0o777).toBe(0o700);
    const err = await failure([
      act({ mkdir: { path: '/missing/y', mode: 0o755, timestamp: -1 } }, 0),
    ]);
    expect(err.code).toBe(FileOpErrorCode.NotFound);
    expect(err.actionIndex).toBe(0);
    expect(err.path).toBe('/missing/y');
    expect(err.message).toMatch(/^"\/missing\/y": parent directory does not exist/);
    expect(err.message).not.toMatch(/action 0/);
  });

  it('mkfile writes data with mode, owner and timestamp; inputs are never modified', async () => {
    await writeFile(join(in0, 'old'), 'old');
    const out = await run([
      act(
        {
          mkfile: {
            path: '/f',
            data: Buffer.from('hello'),
            mode: 0o640,
            owner: byID(7),
            timestamp: ns(T1),
          },
        },
        0,
      ),
    ]);
    expect(await readFile(join(out, 'f'), 'utf8')).toBe('hello');
    expect(await meta(join(out, 'f'))).toEqual([0o640, 7, 7, T1.getTime()]);
    expect(await readFile(join(out, 'old'), 'utf8')).toBe('old');
    expect(await readdir(in0)).toEqual(['old']);
  });

  it('rm: missing path, allowNotFound, wildcards', async () => {
    await mkdir(join(in0, 'd'));
    for (const f of ['a.log', 'b.log', 'keep.txt']) await writeFile(join(in0, 'd', f), f);
    const out = await run([
      act({ rm: { path: '/d/*.log', allowWildcard: true } }, 0),
      act({ rm: { path: '/nope', allowNotFound: true } }, 2),
    ]);
    expect(await readdir(join(out, 'd'))).toEqual(['keep.txt']);
    const err = await failure([act({ rm: { path: '/nope' } }, 0)]);
    expect(err.code).toBe(FileOpErrorCode.NotFound);
    expect(err.path).toBe('/nope');
  });

  it('symlink keeps the target text, sets owner and time on the link', async () => {
    const out = await run([
      act(
        {
          symlink: {
            oldpath: '../../etc/passwd',
            newpath: '/link',
            owner: byID(5, 6),
            timestamp: ns(T1),
          },
        },
        -1,
      ),
    ]);
    expect(await readlink(join(out, 'link'))).toBe('../../etc/passwd');
    const st = await lstat(join(out, 'link'));
    expect([st.uid, st.gid, st.mtime.getTime()]).toEqual([5, 6, T1.getTime()]);
  });
});

describe('copy', () => {
  beforeEach(async () => {
    await mkdir(join(in1, 'src/sub'), { recursive: true });
    await writeFile(join(in1, 'src/a.txt'), 'A');
    await writeFile(join(in1, 'src/b.txt'), 'B');
    await writeFile(join(in1, 'src/sub/c.md'), 'C');
    await lchown(join(in1, 'src/a.txt'), 1234, 2345);
    await chmod(join(in1, 'src/a.txt'), 0o751);
    await utimes(join(in1, 'src/a.txt'), T1, T1);
  });

  it('copies a file to a new name, into a dir given with /, keeping metadata', async () => {
    const out = await run([
      act({ copy: cp('/src/a.txt', '/renamed') }, 0, 1),
      act({ copy: cp('/src/a.txt', '/dir/') }, 2, 1),
    ]);
    expect(await readFile(join(out, 'renamed'), 'utf8')).toBe('A');
    expect(await meta(join(out, 'renamed'))).toEqual([0o751, 1234, 2345, T1.getTime()]);
    expect(await readFile(join(out, 'dir/a.txt'), 'utf8')).toBe('A');
  });

  it('copies a directory itself, or its contents with dirCopyContents', async () => {
    await mkdir(join(in0, 'existing'));
    const out = await run([
      act({ copy: cp('/src', '/existing') }, 0, 1),
      act({ copy: cp('/src', '/contents', { dirCopyContents: true, createDestPath: true }) }, 2, 1),
    ]);
    expect((await readdir(join(out, 'existing/src'))).sort()).toEqual(['a.txt', 'b.txt', 'sub']);
    expect((await readdir(join(out, 'contents'))).sort()).toEqual(['a.txt', 'b.txt', 'sub']);
  });

  it('overrides owner, mode and timestamp', async () => {
    const out = await run([
      act(
        {
          copy: cp('/src', '/o', {
            dirCopyContents: true,
            owner: byID(33, 44),
            mode: 0o600,
            timestamp: ns(T1),
          }),
        },
        0,
        1,
      ),
    ]);
    expect(await meta(join(out, 'o/sub/c.md'))).toEqual([0o600, 33, 44, T1.getTime()]);
    expect(await meta(join(out, 'o/sub'))).toEqual([0o600, 33, 44, T1.getTime()]);
  });

  it('wildcards: several matches into a directory, zero matches allowed or not', async () => {
    const out = await run([act({ copy: cp('/src/*.txt', '/w/', { allowWildcard: true }) }, 0, 1)]);
    expect((await readdir(join(out, 'w'))).sort()).toEqual(['a.txt', 'b.txt']);
    const empty = await run([
      act(
        { copy: cp('/src/*.none', '/w/', { allowWildcard: true, allowEmptyWildcard: true }) },
        0,
        1,
      ),
    ]);
    expect(await readdir(empty)).toEqual([]);
    const notFound = await failure([
      act({ copy: cp('/src/*.none', '/w/', { allowWildcard: true }) }, 0, 1),
    ]);
    expect(notFound.code).toBe(FileOpErrorCode.NotFound);
    const notDir = await failure([
      act({ copy: cp('/src/*.txt', '/file', { allowWildcard: true }) }, 0, 1),
    ]);
    expect(notDir.code).toBe(FileOpErrorCode.Failed);
    expect(notDir.message).toMatch(/must be a directory/);
  });

  it('a missing source is FILEOP_NOT_FOUND; createDestPath=false needs the destination parent', async () => {
    const missing = await failure([act({ copy: cp('/nope', '/x') }, 0, 1)]);
    expect([missing.code, missing.actionIndex, missing.path]).toEqual([
      FileOpErrorCode.NotFound,
      0,
      '/nope',
    ]);
    const noParent = await failure([act({ copy: cp('/src/a.txt', '/no/such/x') }, 0, 1)]);
    expect(noParent.code).toBe(FileOpErrorCode.NotFound);
    const out = await run([
      act({ copy: cp('/src/a.txt', '/no/such/x', { createDestPath: true }) }, 0, 1),
    ]);
    expect(await readFile(join(out, 'no/such/x'), 'utf8')).toBe('A');
  });

  it('followSymlink copies the target of a source symlink, otherwise the link', async () => {
    await symlink('src/a.txt', join(in1, 'ln'));
    const out = await run([
      act({ copy: cp('/ln', '/followed', { followSymlink: true }) }, 0, 1),
      act({ copy: cp('/ln', '/kept') }, 2, 1),
    ]);
    expect((await lstat(join(out, 'followed'))).isFile()).toBe(true);
    expect(await readlink(join(out, 'kept'))).toBe('src/a.txt');
  });

  it('preserves symlinks and hardlinks inside a copied tree', async () => {
    await link(join(in1, 'src/a.txt'), join(in1, 'src/sub/hard'));
    await symlink('../a.txt', join(in1, 'src/sub/soft'));
    const out = await run([
      act({ copy: cp('/src', '/t', { dirCopyContents: true, createDestPath: true }) }, 0, 1),
    ]);
    expect((await lstat(join(out, 't/sub/hard'))).ino).toBe(
      (await lstat(join(out, 't/a.txt'))).ino,
    );
    expect(await readlink(join(out, 't/sub/soft'))).toBe('../a.txt');
  });

  it('a malformed pattern is FILEOP_BAD_PATTERN', async () => {
    const bad = await failure([
      act(
        { copy: cp('/src', '/new/dir/', { excludePatterns: ['a[b'], createDestPath: true }) },
        0,
        1,
      ),
    ]);
    expect([bad.code, bad.actionIndex]).toEqual([FileOpErrorCode.BadPattern, 0]);
    const badWildcard = await failure([act({ rm: { path: '/src/[', allowWildcard: true } }, 1)]);
    expect(badWildcard.code).toBe(FileOpErrorCode.BadPattern);
  });

  it('include and exclude patterns, relative to the copied source', async () => {
    await mkdir(join(in1, 'src/sub/deep'), { recursive: true });
    await writeFile(join(in1, 'src/sub/deep/d.md'), 'D');
    await writeFile(join(in1, 'src/sub/deep/skip.md'), 'S');
    const out = await run([
      act(
        {
          copy: cp('/src', '/inc', {
            dirCopyContents: true,
            createDestPath: true,
            includePatterns: ['**/*.md'],
            excludePatterns: ['**/skip.md'],
          }),
        },
        0,
        1,
      ),
      act(
        {
          copy: cp('/src', '/exc', {
            dirCopyContents: true,
            createDestPath: true,
            excludePatterns: ['sub', '!sub/c.md'],
          }),
        },
        2,
        1,
      ),
      act(
        {
          copy: cp('/src', '/none', {
            dirCopyContents: true,
            createDestPath: true,
            includePatterns: ['nothing/*'],
          }),
        },
        3,
        1,
      ),
    ]);
    expect((await readdir(join(out, 'inc'))).sort()).toEqual(['sub']);
    expect((await readdir(join(out, 'inc/sub'))).sort()).toEqual(['c.md', 'deep']);
    expect(await readdir(join(out, 'inc/sub/deep'))).toEqual(['d.md']);
    expect((await readdir(join(out, 'exc'))).sort()).toEqual(['a.txt', 'b.txt', 'sub']);
    expect(await readdir(join(out, 'exc/sub'))).toEqual(['c.md']);
    expect(await readdir(join(out, 'none'))).toEqual([]);
  });

  it('alwaysReplaceExistingDestPaths replaces entries of another type', async () => {
    // in0 has a directory where the source has the file sub/c.md, in1's src2 the reverse for a.txt.
    await mkdir(join(in0, 'sub/c.md'), { recursive: true });
    await writeFile(join(in0, 'sub/c.md/x'), 'x');
    const refused = await failure([
      act({ copy: cp('/src', '/', { dirCopyContents: true }) }, 0, 1),
    ]);
    expect(refused.code).toBe(FileOpErrorCode.Failed);
    expect(refused.message).toMatch(/cannot replace a directory/);
    const out = await run([
      act(
        { copy: cp('/src', '/', { dirCopyContents: true, alwaysReplaceExistingDestPaths: true }) },
        0,
        1,
      ),
    ]);
    expect(await readFile(join(out, 'sub/c.md'), 'utf8')).toBe('C');

    await mkdir(join(in1, 'src2/a.txt'), { recursive: true });
    await writeFile(join(in0, 'a.txt'), 'file');
    const refused2 = await failure([
      act({ copy: cp('/src2', '/', { dirCopyContents: true }) }, 0, 1),
    ]);
    expect(refused2.message).toMatch(/onto a non-directory/);
    const out2 = await run([
      act(
        { copy: cp('/src2', '/', { dirCopyContents: true, alwaysReplaceExistingDestPaths: true }) },
        0,
        1,
      ),
    ]);
    expect((await lstat(join(out2, 'a.txt'))).isDirectory()).toBe(true);
  });
});

describe('owners by name', () => {
  beforeEach(async () => {
    await mkdir(join(in0, 'etc'));
    await writeFile(
      join(in0, 'etc/passwd'),
      'root:x:0:0:root:/root:/bin/sh\napp:x:1500:1600::/home/app:/bin/sh\n',
    );
    await writeFile(join(in0, 'etc/group'), 'root:x:0:\nstaff:x:50:app\n');
    await writeFile(join(in1, 'f'), 'f');
  });

  it('resolves user and group names against the target input', async () => {
    const named = (name: string): pb.IUserOpt => ({ byName: { name, input: 0 } });
    const out = await run([
      act({ copy: cp('/f', '/u', { owner: { user: named('app') } }) }, 0, 1),
      act(
        { copy: cp('/f', '/ug', { owner: { user: named('app'), group: named('staff') } }) },
        2,
        1,
      ),
      act(
        {
          mkdir: {
            path: '/d',
            mode: 0o755,
            owner: { user: named('root'), group: { byID: 9 } },
            timestamp: -1,
          },
        },
        3,
      ),
    ]);
    expect((await meta(join(out, 'u'))).slice(1, 3)).toEqual([1500, 1600]);
    expect((await meta(join(out, 'ug'))).slice(1, 3)).toEqual([1500, 50]);
    expect((await meta(join(out, 'd'))).slice(1, 3)).toEqual([0, 9]);
  });

  it('an unknown name is FILEOP_UNKNOWN_USER; root resolves without /etc/passwd', async () => {
    const err = await failure([
      act(
        { copy: cp('/f', '/u', { owner: { user: { byName: { name: 'ghost', input: 0 } } } }) },
        0,
        1,
      ),
    ]);
    expect(err.code).toBe(FileOpErrorCode.UnknownUser);
    expect(err.actionIndex).toBe(0);
    const out = await run([
      act(
        {
          mkfile: {
            path: '/r',
            mode: 0o644,
            data: Buffer.from(''),
            owner: { user: { byName: { name: 'root', input: 1 } } },
            timestamp: -1,
          },
        },
        1,
      ),
    ]);
    expect((await meta(join(out, 'r'))).slice(1, 3)).toEqual([0, 0]);
  });

  it('reads /etc/passwd through a symlink inside the root only', async () => {
    await rm(join(in1, 'f'));
    await mkdir(join(in1, 'etc'));
    // A link climbing to the host's /etc/group (which names `daemon`) is re-rooted to in1's: missing.
    await symlink('/../../../../etc/group', join(in1, 'etc/passwd'));
    const err = await failure(
      [
        act(
          {
            mkfile: {
              path: '/x',
              mode: 0o644,
              data: Buffer.from(''),
              owner: { user: { byName: { name: 'daemon', input: 0 } } },
              timestamp: -1,
            },
          },
          0,
        ),
      ],
      [in1],
    );
    expect(err.code).toBe(FileOpErrorCode.UnknownUser);
  });
});

describe('unpacking archives (ADD)', () => {
  beforeEach(async () => {
    await mkdir(join(base, 'in1', 'tree/dir'), { recursive: true });
    await writeFile(join(in1, 'tree/dir/file'), 'packed');
    await exec('tar', ['-C', join(in1, 'tree'), '-czf', join(in1, 'a.tar.gz'), 'dir']);
    await exec('tar', ['-C', join(in1, 'tree'), '-cjf', join(in1, 'a.tar.bz2'), 'dir']);
    await writeFile(join(in1, 'plain.txt'), 'not an archive');
  });

  it('unpacks a tar.gz / tar.bz2 into the destination and copies other files', async () => {
    const out = await run([
      act(
        {
          copy: cp('/a.tar.gz', '/gz', {
            attemptUnpackDockerCompatibility: true,
            createDestPath: true,
          }),
        },
        0,
        1,
      ),
      act(
        {
          copy: cp('/a.tar.bz2', '/bz/', {
            attemptUnpackDockerCompatibility: true,
            createDestPath: true,
          }),
        },
        2,
        1,
      ),
      act(
        {
          copy: cp('/plain.txt', '/plain/', {
            attemptUnpackDockerCompatibility: true,
            createDestPath: true,
          }),
        },
        3,
        1,
      ),
      act({ copy: cp('/a.tar.gz', '/kept/', { createDestPath: true }) }, 4, 1),
    ]);
    expect(await readFile(join(out, 'gz/dir/file'), 'utf8')).toBe('packed');
    expect(await readFile(join(out, 'bz/dir/file'), 'utf8')).toBe('packed');
    expect(await readFile(join(out, 'plain/plain.txt'), 'utf8')).toBe('not an archive');
    expect((await lstat(join(out, 'kept/a.tar.gz'))).isFile()).toBe(true);
  });

  it('rejects ../ entries and escaping hardlinks; symlinks cannot lead writes out', async () => {
    type Entry = Partial<tar.Header> & Pick<tar.Header, 'name'>;
    const bad = async (entries: Entry[], name: string): Promise<void> => {
      const pack = tar.pack();
      for (const h of entries) {
        if (h.type === 'file') pack.entry(h, 'pwned');
        else pack.entry(h);
      }
      pack.finalize();
      const chunks: Buffer[] = [];
      for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
      await writeFile(join(in1, name), gzipSync(Buffer.concat(chunks)));
    };
    await bad([{ name: '../../outside/sentinel', type: 'file', size: 5 }], 'dotdot.tgz');
    await bad([{ name: 'hard', type: 'link', linkname: '../x' }], 'hard.tgz');
    await bad([{ name: '/a/../../b', type: 'file', size: 5 }], 'absdotdot.tgz');
    const unpack = (f: string): pb.IFileAction =>
      act(
        {
          copy: cp(`/${f}`, '/x', { attemptUnpackDockerCompatibility: true, createDestPath: true }),
        },
        0,
        1,
      );
    for (const f of ['dotdot.tgz', 'hard.tgz', 'absdotdot.tgz']) {
      const err = await failure([unpack(f)]);
      expect(err.code, f).toBe(FileOpErrorCode.UnsafePath);
    }
    // Symlinks (absolute, or relative climbing out) followed by files written through them: the
    // destination acts as a chroot, so the writes land inside it.
    await bad(
      [
        { name: 'abs', type: 'symlink', linkname: '/' },
        { name: 'abs/outside/sentinel', type: 'file', size: 5 },
        { name: 'up', type: 'symlink', linkname: '../../../../outside' },
        { name: 'up/other', type: 'file', size: 5 },
      ],
      'links.tgz',
    );
    const out = await run([unpack('links.tgz')]);
    expect(await readlink(join(out, 'x/up'))).toBe('../../../../outside');
    expect(await readFile(join(out, 'x/outside/other'), 'utf8')).toBe('pwned');
    expect(await readFile(join(out, 'x/outside/sentinel'), 'utf8')).toBe('pwned');
  });
});

describe('hostile trees', () => {
  beforeEach(async () => {
    await symlink('/', join(in0, 'evil'));
    await symlink('../../..', join(in0, 'up'));
    await mkdir(join(in0, 'd'));
    await symlink(join(base, 'outside'), join(in0, 'd/hostdir'));
    await writeFile(join(in1, 'payload'), 'payload');
  });

  it('mkdir and mkfile through escaping symlinks stay inside the root', async () => {
    const mk = (path: string, makeParents: boolean): pb.IFileAction['mkdir'] => ({
      path,
      mode: 0o755,
      makeParents,
      timestamp: -1,
    });
    const out = await run([
      act({ mkdir: mk('/evil/outside/made', true) }, 0),
      act({ mkdir: mk('/up/up2', false) }, 2),
      act({ mkdir: mk('/d/hostdir', true) }, 3),
      act(
        {
          mkfile: {
            path: '/d/hostdir/sentinel',
            mode: 0o644,
            data: Buffer.from('x'),
            timestamp: -1,
          },
        },
        4,
        -1,
        0,
      ),
    ]);
    expect((await lstat(join(out, 'outside/made'))).isDirectory()).toBe(true);
    expect((await lstat(join(out, 'up2'))).isDirectory()).toBe(true);
    // d/hostdir names the host's outside dir: re-rooted, it is created and written below the root.
    expect(await readFile(join(out, base, 'outside', 'sentinel'), 'utf8')).toBe('x');
    expect((await lstat(join(out, 'd/hostdir'))).isSymbolicLink()).toBe(true);
  });

  it('copy destinations through escaping symlinks stay inside the root', async () => {
    const out = await run([
      act({ copy: cp('/payload', '/evil/outside/sentinel', { createDestPath: true }) }, 0, 1),
      act({ copy: cp('/payload', '/up/', {}) }, 2, 1),
      act({ copy: cp('/payload', '/d/hostdir/', { createDestPath: true }) }, 3, 1),
    ]);
    expect(await readFile(join(out, 'outside/sentinel'), 'utf8')).toBe('payload');
    expect(await readFile(join(out, 'payload'), 'utf8')).toBe('payload');
    expect(await readFile(join(out, base, 'outside', 'payload'), 'utf8')).toBe('payload');
  });

  it('source symlinks never read outside the source root', async () => {
    await symlink(join(base, 'outside', 'sentinel'), join(in1, 'hostfile'));
    await symlink('../../../outside', join(in1, 'reldir'));
    const out = await run([
      act({ copy: cp('/hostfile', '/a', { followSymlink: true }) }, 0, 1),
    ]).catch((e: unknown) => e);
    expect(out).toBeInstanceOf(FileOpError);
    expect((out as FileOpError).code).toBe(FileOpErrorCode.NotFound);
    const out2 = await run([
      act({ copy: cp('/reldir/sentinel', '/b', { followSymlink: true }) }, 0, 1),
    ]).catch((e: unknown) => e);
    expect((out2 as FileOpError).code).toBe(FileOpErrorCode.NotFound);
    // Wildcards below an escaping directory link only see the source root.
    await mkdir(join(in1, 'outside'));
    await writeFile(join(in1, 'outside', 'inner'), 'inner');
    const out3 = await run([
      act({ copy: cp('/reldir/*', '/w/', { allowWildcard: true, followSymlink: true }) }, 0, 1),
    ]);
    expect(await readdir(join(out3, 'w'))).toEqual(['inner']);
  });

  it('symlink loops are a typed error', async () => {
    await symlink('l2', join(in0, 'l1'));
    await symlink('l1', join(in0, 'l2'));
    const err = await failure([
      act({ mkfile: { path: '/l1/f', mode: 0o644, data: Buffer.from(''), timestamp: -1 } }, 0),
    ]);
    expect(err.code).toBe(FileOpErrorCode.SymlinkLoop);
    expect(err.path).toBe('/l1/f');
  });
});

describe('action graph', () => {
  it('chains results, reads earlier results as copy sources, runs only what outputs need', async () => {
    await writeFile(join(in1, 'f'), 'from input 1');
    const actions: pb.IFileAction[] = [
      act({ mkdir: { path: '/stage', mode: 0o755, timestamp: -1 } }, -1), // result index 2
      act(
        { mkfile: { path: '/stage/made', mode: 0o644, data: Buffer.from('made'), timestamp: -1 } },
        2,
      ), // 3
      act({ rm: { path: '/never-there' } }, 0), // 4: not needed, would fail
      act({ copy: cp('/stage', '/from-stage') }, 0, 3), // 5: reads result 3
      act({ copy: cp('/f', '/f') }, 5, 1, 0), // output 0
      act({ copy: cp('/stage/made', '/only') }, -1, 3, 1), // output 1
    ];
    const { outputs } = await executeFileOp({ actions }, [in0, in1], copyingMutable(scratch));
    expect(outputs).toHaveLength(2);
    expect((await readdir(outputs[0]!)).sort()).toEqual(['f', 'from-stage']);
    expect(await readFile(join(outputs[0]!, 'from-stage/made'), 'utf8')).toBe('made');
    expect(await readdir(outputs[1]!)).toEqual(['only']);
    expect(await readdir(in0)).toEqual([]);
  });

  it('discards intermediate targets and uses a result once-used in place', async () => {
    const made: string[] = [];
    const discarded: string[] = [];
    const m = copyingMutable(scratch);
    const { outputs } = await executeFileOp(
      {
        actions: [
          act({ mkdir: { path: '/a', mode: 0o755, timestamp: -1 } }, -1),
          act({ mkdir: { path: '/a/b', mode: 0o755, timestamp: -1 } }, 1),
          act({ copy: cp('/a', '/copied') }, -1, 2, 0),
        ],
      },
      [in0],
      {
        mutable: async (from) => {
          const d = await m.mutable(from);
          made.push(d);
          return d;
        },
        discard: async (d) => {
          discarded.push(d);
          await m.discard(d);
        },
      },
    );
    // mkdir /a/b mutated mkdir /a's result in place: 2 targets, not 3; the intermediate was discarded.
    expect(made).toHaveLength(2);
    expect(discarded).toEqual([made[0]]);
    expect(outputs[0]).toBe(made[1]);
    expect((await lstat(join(outputs[0]!, 'copied/b'))).isDirectory()).toBe(true);
  });

  it('works on decoded wire messages (Long fields, proto3 defaults)', async () => {
    await writeFile(join(in0, 'f'), 'x');
    const op = pb.FileOp.decode(
      pb.FileOp.encode({
        actions: [
          {
            input: 0,
            secondaryInput: 0,
            output: -1,
            copy: { src: '/f', dest: '/g', mode: -1, timestamp: Long.fromNumber(ns(T1)) },
          },
          {
            input: 1,
            secondaryInput: -1,
            output: 0,
            mkfile: { path: '/h', mode: 0o600, data: Buffer.from('h'), timestamp: -1 },
          },
        ],
      }).finish(),
    );
    const { outputs } = await executeFileOp(op, [in0], copyingMutable(scratch));
    expect(await meta(join(outputs[0]!, 'g'))).toEqual([0o644, 0, 0, T1.getTime()]);
    expect(await readFile(join(outputs[0]!, 'h'), 'utf8')).toBe('h');
  });
});
