/**
 * Owner resolution for FileOp actions, as BuildKit's readUser: a user given by id is `uid:uid`
 * unless a group is given; a name is looked up in `/etc/passwd` (and a group name in `/etc/group`)
 * of the root the NamedUserOpt's `input` designates, resolved inside that root.
 */
import { readFile } from 'node:fs/promises';
import type { Long, pb } from '@kiln/protocol';
import { errnoOf, resolveInRoot } from '../../fs/index.js';
import type { Owner } from '../../fs/index.js';
import { FileOpError, FileOpErrorCode } from './errors.js';

/** Returns the root directory for a NamedUserOpt input index, or undefined when there is none. */
export type RootForInput = (index: number) => Promise<string | undefined>;

interface DbEntry {
  name: string;
  id: number;
  gid: number;
}

async function readDb(
  root: string | undefined,
  file: '/etc/passwd' | '/etc/group',
): Promise<DbEntry[]> {
  if (root === undefined) return [];
  let text: string;
  try {
    text = await readFile(await resolveInRoot(root, file), 'utf8');
  } catch (err) {
    const code = errnoOf(err);
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') return [];
    throw err;
  }
  const out: DbEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 3 || line.startsWith('#')) continue;
    const id = Number(f[2]);
    const gid = file === '/etc/passwd' ? Number(f[3]) : id;
    if (!Number.isInteger(id) || !Number.isInteger(gid)) continue;
    out.push({ name: f[0]!, id, gid });
  }
  return out;
}

function toIndex(v: number | Long | null | undefined): number {
  if (v === null || v === undefined) return 0;
  return typeof v === 'number' ? v : v.toNumber();
}

async function lookup(
  opt: pb.INamedUserOpt,
  rootFor: RootForInput,
  file: '/etc/passwd' | '/etc/group',
): Promise<DbEntry> {
  const name = opt.name ?? '';
  const root = await rootFor(toIndex(opt.input));
  const found = (await readDb(root, file)).find((e) => e.name === name);
  if (found !== undefined) return found;
  if (name === 'root') return { name, id: 0, gid: 0 };
  if (/^[0-9]+$/.test(name)) return { name, id: Number(name), gid: Number(name) };
  const what = file === '/etc/passwd' ? 'user' : 'group';
  throw new FileOpError(
    FileOpErrorCode.UnknownUser,
    `unable to find ${what} ${name}: no matching entries in ${file}`,
    {
      details: { [what]: name },
    },
  );
}

/** Resolves a ChownOpt to numeric ids; undefined when no owner is given (keep/default). */
export async function resolveOwner(
  chown: pb.IChownOpt | null | undefined,
  rootFor: RootForInput,
): Promise<Owner | undefined> {
  if (!chown || (!chown.user && !chown.group)) return undefined;
  const owner: Owner = { uid: 0, gid: 0 };
  const user = chown.user;
  if (user?.byName) {
    const e = await lookup(user.byName, rootFor, '/etc/passwd');
    owner.uid = e.id;
    owner.gid = e.gid;
  } else if (user?.byID !== null && user?.byID !== undefined) {
    owner.uid = user.byID;
    owner.gid = user.byID;
  }
  const group = chown.group;
  if (group?.byName) {
    owner.gid = (await lookup(group.byName, rootFor, '/etc/group')).id;
  } else if (group?.byID !== null && group?.byID !== undefined) {
    owner.gid = group.byID;
  }
  return owner;
}
