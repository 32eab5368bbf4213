import { readFile } from 'node:fs/promises';
import { RuntimeError, RuntimeErrorCode } from './errors.js';
import { resolveInRoot } from '@kiln/layers';

export interface ResolvedUser {
  uid: number;
  gid: number;
  /** Supplementary groups (only when the group is not given explicitly, as runc's GetExecUser). */
  additionalGids: number[];
  /** The home directory from /etc/passwd, `/` when unknown. */
  home: string;
}

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}
interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

const MAX_ID = 2 ** 31 - 1;

function numeric(s: string): number | undefined {
  if (!/^[0-9]+$/.test(s)) return undefined;
  const n = Number(s);
  if (n > MAX_ID) throw new RuntimeError(RuntimeErrorCode.UserNotFound, `id ${s} out of range`);
  return n;
}

async function readRootFile(rootfs: string, path: string): Promise<string | undefined> {
  try {
    return await readFile(await resolveInRoot(rootfs, path), 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') return undefined;
    throw err;
  }
}

function lines(text: string | undefined): string[][] {
  if (text === undefined) return [];
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => l.split(':'));
}

function parsePasswd(text: string | undefined): PasswdEntry[] {
  return lines(text).flatMap((f) => {
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (f[0] === undefined || !Number.isInteger(uid) || !Number.isInteger(gid)) return [];
    return [{ name: f[0], uid, gid, home: f[5] ?? '/' }];
  });
}

function parseGroup(text: string | undefined): GroupEntry[] {
  return lines(text).flatMap((f) => {
    const gid = Number(f[2]);
    if (f[0] === undefined || !Number.isInteger(gid)) return [];
    return [{ name: f[0], gid, members: (f[3] ?? '').split(',').filter((m) => m !== '') }];
  });
}

/**
 * Resolves a user spec (`name`, `uid`, `name:group`, `uid:gid`, `name:gid`, `uid:group`) against
 * the rootfs' /etc/passwd and /etc/group with the semantics of runc's `user.GetExecUser`, as
 * BuildKit does: `uid:gid` needs no files; a numeric uid missing from passwd runs with gid 0; a
 * name that is not there is an error; supplementary groups come from /etc/group memberships only
 * when the group is implicit. Empty means root.
 */
export async function resolveUser(rootfs: string, spec: string | undefined): Promise<ResolvedUser> {
  const str = spec ?? '';
  if (str === '') return { uid: 0, gid: 0, additionalGids: [], home: '/root' };
  const colon = str.indexOf(':');
  const userArg = colon < 0 ? str : str.slice(0, colon);
  const groupArg = colon < 0 ? undefined : str.slice(colon + 1);
  const uidNum = numeric(userArg);
  const gidNum = groupArg === undefined ? undefined : numeric(groupArg);
  if (uidNum !== undefined && gidNum !== undefined) {
    return { uid: uidNum, gid: gidNum, additionalGids: [], home: '/' };
  }

  const passwd = parsePasswd(await readRootFile(rootfs, '/etc/passwd'));
  const user: ResolvedUser = { uid: 0, gid: 0, additionalGids: [], home: '/' };
  let matchedName: string | undefined;
  if (userArg !== '') {
    const entry = passwd.find(
      (p) => p.name === userArg || (uidNum !== undefined && p.uid === uidNum),
    );
    if (entry !== undefined) {
      user.uid = entry.uid;
      user.gid = entry.gid;
      user.home = entry.home;
      matchedName = entry.name;
    } else if (uidNum !== undefined) {
      user.uid = uidNum;
    } else {
      throw new RuntimeError(
        RuntimeErrorCode.UserNotFound,
        `unable to find user ${userArg}: no matching entries in passwd file`,
        {
          details: { user: str },
        },
      );
    }
  }

  if (groupArg !== undefined || matchedName !== undefined) {
    const groups = parseGroup(await readRootFile(rootfs, '/etc/group'));
    if (groupArg !== undefined) {
      const g = groups.find(
        (e) => e.name === groupArg || (gidNum !== undefined && e.gid === gidNum),
      );
      if (g !== undefined) user.gid = g.gid;
      else if (gidNum !== undefined) user.gid = gidNum;
      else {
        throw new RuntimeError(
          RuntimeErrorCode.UserNotFound,
          `unable to find group ${groupArg}: no matching entries in group file`,
          {
            details: { user: str },
          },
        );
      }
    } else {
      user.additionalGids = groups
        .filter((g) => g.members.includes(matchedName!))
        .map((g) => g.gid);
    }
  }
  return user;
}
