import { readFile } from 'node:fs/promises';

/** One line of `/proc/<pid>/uid_map` or `gid_map`: ids `inside..inside+count` are `outside..`. */
export interface IdMapping {
  inside: number;
  outside: number;
  count: number;
}

/** The id mappings of a user namespace other than the initial one. */
export interface UserNamespace {
  uidMap: IdMapping[];
  gidMap: IdMapping[];
  /** `uid 0 -> 1001, 1..65536 -> 100000..165535` style, for messages. */
  describe(): string;
  /** The host uid of `uid` inside; undefined when it is not mapped. */
  hostUid(uid: number): number | undefined;
}

/** Parses an id map (`inside outside count` lines). */
export function parseIdMap(text: string): IdMapping[] {
  const out: IdMapping[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/).map(Number);
    if (f.length === 3 && f.every(Number.isInteger))
      out.push({ inside: f[0]!, outside: f[1]!, count: f[2]! });
  }
  return out;
}

function describeMap(m: readonly IdMapping[]): string {
  return m
    .map((e) =>
      e.count === 1
        ? `${e.inside} -> ${e.outside}`
        : `${e.inside}..${e.inside + e.count - 1} -> ${e.outside}..${e.outside + e.count - 1}`,
    )
    .join(', ');
}

/**
 * The user namespace this process runs in, or undefined in the initial one (whose uid map is the
 * identity over every id: `0 0 4294967295`).
 */
export async function currentUserNamespace(
  procDir = '/proc/self',
): Promise<UserNamespace | undefined> {
  const uidMap = parseIdMap(await readFile(`${procDir}/uid_map`, 'utf8'));
  const gidMap = parseIdMap(await readFile(`${procDir}/gid_map`, 'utf8'));
  const initial = (m: IdMapping[]): boolean =>
    m.length === 1 && m[0]!.inside === 0 && m[0]!.outside === 0 && m[0]!.count === 4294967295;
  if (initial(uidMap) && initial(gidMap)) return undefined;
  return {
    uidMap,
    gidMap,
    describe: () => `uids ${describeMap(uidMap)}; gids ${describeMap(gidMap)}`,
    hostUid: (uid) => {
      const e = uidMap.find((x) => uid >= x.inside && uid < x.inside + x.count);
      return e === undefined ? undefined : e.outside + (uid - e.inside);
    },
  };
}
