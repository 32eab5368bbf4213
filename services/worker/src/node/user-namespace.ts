/**
 * Running the worker in a user namespace: rootless (started by a user other than root) or, for a
 * root worker, `--userns-remap USER`. The process re-executes itself under `unshare` with its
 * subordinate ids (`/etc/subuid`, `/etc/subgid`, through newuidmap and newgidmap), as
 * rootlesskit does for BuildKit's rootless mode: inside, it is root of a namespace that maps
 * only those ids, its snapshots hold files owned by them on the host (container root is the
 * range's first id, or the starting user), and what it exports (read from inside) shows the ids
 * the build gave them, uid 0 included.
 */
import { spawn } from 'node:child_process';
import { access, chown, mkdir, readFile, readdir, stat } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { KilnError } from '@kiln/protocol';
import { initCpuset } from '../runtime/cgroups.js';

/** Set in the child's environment: the worker already runs in its user namespace. */
export const USERNS_ENV = 'KILN_WORKER_IN_USERNS';
/**
 * The cgroup (v1 hierarchies, or the v2 tree) the worker's user was given to make its task groups
 * in: set by a remapped worker's root process for its child, or by an operator for a rootless
 * worker whose group root delegated ({@link delegateCgroup}).
 */
export const CGROUP_ROOT_ENV = 'KILN_WORKER_CGROUP_ROOT';

/** The worker cannot enter its user namespace (no subordinate ids, no newuidmap, ...). */
export class UserNamespaceError extends KilnError {
  constructor(message: string, details: Record<string, string | number> = {}, cause?: unknown) {
    super('WORKER_USERNS', message, { cause, details });
  }
}

/** A subordinate id range of `/etc/subuid` or `/etc/subgid`. */
export interface SubordinateRange {
  start: number;
  count: number;
}

/**
 * The first range `user` (name or numeric id) has in `file` (`name:start:count` lines), or
 * undefined. Ranges under 65536 ids are refused: a build's users (nobody is 65534) need them.
 */
export async function subordinateRange(
  file: string,
  user: { name: string; uid: number },
): Promise<SubordinateRange | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  for (const line of text.split('\n')) {
    const [who, start, count] = line.trim().split(':');
    if (who !== user.name && who !== String(user.uid)) continue;
    const r = { start: Number(start), count: Number(count) };
    if (Number.isInteger(r.start) && Number.isInteger(r.count) && r.count > 0) return r;
  }
  return undefined;
}

/** What to run, and the cgroup to delegate first (root only). */
export interface UserNamespacePlan {
  command: string;
  args: string[];
  /** `rootless` (non-root user) or `remap` (root with `--userns-remap`). */
  mode: 'rootless' | 'remap';
  uids: SubordinateRange;
  gids: SubordinateRange;
  user: string;
}

/** How many ids a build namespace gets: BuildKit's and Docker's 65536. */
const NS_IDS = 65536;

async function ranges(user: {
  name: string;
  uid: number;
}): Promise<{ uids: SubordinateRange; gids: SubordinateRange }> {
  const uids = await subordinateRange('/etc/subuid', user);
  const gids = await subordinateRange('/etc/subgid', user);
  for (const [file, r] of [
    ['/etc/subuid', uids],
    ['/etc/subgid', gids],
  ] as const) {
    if (r === undefined || r.count < NS_IDS) {
      throw new UserNamespaceError(
        `user ${user.name} has ${r === undefined ? 'no' : `only ${r.count}`} subordinate ids in ${file} (a build needs ${NS_IDS}): add them, e.g. usermod --add-subuids 100000-165535 --add-subgids 100000-165535 ${user.name}`,
        { user: user.name, file },
      );
    }
  }
  return { uids: uids!, gids: gids! };
}

async function lookupUser(name: string): Promise<{ name: string; uid: number; gid: number }> {
  const passwd = await readFile('/etc/passwd', 'utf8');
  for (const line of passwd.split('\n')) {
    const f = line.split(':');
    if (f[0] === name || (/^\d+$/.test(name) && f[2] === name))
      return { name: f[0]!, uid: Number(f[2]), gid: Number(f[3]) };
  }
  throw new UserNamespaceError(`--userns-remap: no user ${name} in /etc/passwd`, { user: name });
}

/**
 * The command that runs this worker in its user namespace, or undefined when it should run as it
 * is (root without `--userns-remap`, or already inside).
 */
export async function userNamespacePlan(o: {
  usernsRemap: string | undefined;
  env: Readonly<Record<string, string | undefined>>;
  /** The script and its arguments (`process.argv.slice(1)`). */
  argv: readonly string[];
  uid?: number;
}): Promise<UserNamespacePlan | undefined> {
  if (o.env[USERNS_ENV]) return undefined;
  const uid = o.uid ?? process.getuid?.() ?? 0;
  if (uid === 0 && o.usernsRemap === undefined) return undefined;
  const mode = uid === 0 ? 'remap' : 'rootless';
  const user = mode === 'remap' ? await lookupUser(o.usernsRemap!) : currentUser();
  const { uids, gids } = await ranges(user);
  for (const tool of ['newuidmap', 'newgidmap', 'unshare']) {
    if (!(await onPath(tool))) {
      throw new UserNamespaceError(
        `${tool} is not installed: a ${mode === 'rootless' ? 'rootless worker' : 'worker with --userns-remap'} needs it (Debian: apt-get install uidmap util-linux)`,
        { tool },
      );
    }
  }
  // Rootless: the user is root inside and its subordinate ids are 1..65536 (rootlesskit's
  // layout). Remapped: 0..65535 are the range, so nothing inside is a host user.
  const maps =
    mode === 'rootless'
      ? [
          '--map-root-user',
          `--map-users=${uids.start},1,${NS_IDS}`,
          `--map-groups=${gids.start},1,${NS_IDS}`,
        ]
      : [
          `--map-users=${uids.start},0,${NS_IDS}`,
          `--map-groups=${gids.start},0,${NS_IDS}`,
          ...['--setuid', '0', '--setgid', '0'],
        ];
  // newuidmap maps only the caller's own subordinate ids: root has none, so a remapped worker's
  // namespace is made by its user (who is nobody inside it).
  const asUser =
    mode === 'remap'
      ? ['setpriv', `--reuid=${user.uid}`, `--regid=${user.gid}`, '--init-groups', 'unshare']
      : ['unshare'];
  return {
    command: asUser[0]!,
    args: [
      ...asUser.slice(1),
      ...maps,
      '--mount',
      '--propagation',
      'private',
      '--',
      process.execPath,
      ...process.execArgv,
      ...o.argv,
    ],
    mode,
    uids,
    gids,
    user: user.name,
  };
}

function currentUser(): { name: string; uid: number; gid: number } {
  const u = userInfo();
  return { name: u.username, uid: u.uid, gid: u.gid };
}

async function onPath(tool: string): Promise<boolean> {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    if (
      dir !== '' &&
      (await access(join(dir, tool)).then(
        () => true,
        () => false,
      ))
    )
      return true;
  }
  return false;
}

/**
 * Root only: makes the group `name` in the cgroup v2 tree, or in every v1 hierarchy (the runtime
 * puts a container in all of them), owned by `owner` (the namespace's root on the host), so that
 * the worker inside can make its task groups there and write their limits. Returns its path.
 */
export async function delegateCgroup(name: string, owner: number): Promise<string> {
  const root = '/sys/fs/cgroup';
  const v2 = await access(join(root, 'cgroup.controllers')).then(
    () => true,
    () => false,
  );
  const hierarchies = v2
    ? [root]
    : (await readdir(root, { withFileTypes: true }))
        .filter((d) => d.isDirectory())
        .map((d) => join(root, d.name));
  for (const h of hierarchies) {
    if (
      !(await access(join(h, 'cgroup.procs')).then(
        () => true,
        () => false,
      ))
    )
      continue;
    const dir = join(h, name);
    if (h.endsWith('/cpuset')) await initCpuset(`/${name}`);
    else await mkdir(dir, { recursive: true });
    await chown(dir, owner, owner);
    for (const f of await readdir(dir, { withFileTypes: true })) {
      // The group's own interface files a delegate writes (systemd's delegation list).
      if (f.isFile() && /^(cgroup\.(procs|subtree_control|threads)|tasks)$/.test(f.name))
        await chown(join(dir, f.name), owner, owner);
    }
  }
  return `/${name}`;
}

/**
 * Root only, before a remapped worker starts: its state dir (and filesystem store) are made, or
 * must already be, owned by the namespace's root, whose files they will hold. A state dir a root
 * worker used holds files of the host's root that the namespace cannot write: refused, typed.
 */
export async function prepareRemappedDirs(
  config: { stateDir: string; store: { type: string; dir?: string } },
  plan: UserNamespacePlan,
): Promise<void> {
  const dirs = [config.stateDir, ...(config.store.type === 'fs' ? [config.store.dir!] : [])];
  for (const dir of dirs) {
    const st = await stat(dir).catch(() => undefined);
    if (st !== undefined && st.uid !== plan.uids.start && (await readdir(dir)).length > 0) {
      throw new UserNamespaceError(
        `${dir} belongs to uid ${st.uid}, and a worker with --userns-remap ${plan.user} keeps its files as uid ${plan.uids.start} and up: give it a directory of its own (or chown -R it)`,
        { path: dir, uid: st.uid },
      );
    }
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chown(dir, plan.uids.start, plan.gids.start);
  }
}

/**
 * Runs `plan` with this process' stdio and environment (plus the marker), passes SIGTERM and
 * SIGINT on, and resolves with the exit code to exit with.
 */
export function runInUserNamespace(
  plan: UserNamespacePlan,
  env: Record<string, string>,
): Promise<number> {
  const child = spawn(plan.command, plan.args, {
    stdio: 'inherit',
    env: { ...process.env, [USERNS_ENV]: plan.mode, ...env },
  });
  const forward = (sig: NodeJS.Signals) => () => child.kill(sig);
  const onTerm = forward('SIGTERM');
  const onInt = forward('SIGINT');
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  return new Promise((resolve, reject) => {
    child.on('error', (err) =>
      reject(new UserNamespaceError(`starting ${plan.command}: ${err.message}`, {}, err)),
    );
    child.on('close', (code, signal) => {
      process.off('SIGTERM', onTerm);
      process.off('SIGINT', onInt);
      resolve(code ?? (signal === null ? 1 : 128 + 15));
    });
  });
}
