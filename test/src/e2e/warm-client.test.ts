/**
 * The warm client (cli/src/warm-client.ts, cli/native/kiln-launch.c): a `kiln build` run as a
 * command leaves a loaded process waiting in the user's cache dir; the next `kiln build` is handed
 * to it (argv, cwd, environment, stdin/stdout/stderr as descriptors, signals, exit status) and
 * behaves as a process of its own. A real scheduler (ControlServer on a real nats-server, no
 * worker): a Dockerfile asking for an entitlement is refused at solve time (a build that reached
 * the farm and reports back), one needing a worker waits (a build to interrupt). Needs
 * `npm run build` (the bundle and the launcher).
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, makeTempDir, waitFor } from '../harness/index.js';
import { ENTITLEMENT_DOCKERFILE, startWorkerlessFarm } from './workerless-farm.js';
import type { WorkerlessFarm } from './workerless-farm.js';

const BIN = join(REPO_ROOT, 'cli', 'bin', 'kiln.js');

let tmp: { dir: string; remove: () => void };
let farm: WorkerlessFarm;
let addr: string;
let ctx: string;
let cache: string;

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Starts the command with the test's cache dir (its own warm clients) and farm. */
function start(
  args: string[],
  o: { env?: Record<string, string>; cwd?: string; input?: string; argv0?: string[] } = {},
): { child: ChildProcess; done: Promise<Result>; stderr: () => string } {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    KILN_CACHE_DIR: cache,
    KILN_ADDR: addr,
    KILN_WARM_IDLE_MS: '120000',
    KILN_DEBUG: '1',
    ...o.env,
  };
  delete env.NODE_OPTIONS;
  const [cmd, ...pre] = o.argv0 ?? [BIN];
  const child = spawn(cmd!, [...pre, ...args], { env, cwd: o.cwd ?? tmp.dir, stdio: 'pipe' });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdin.end(o.input ?? '');
  const done = new Promise<Result>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  return { child, done, stderr: () => stderr };
}

const run = (args: string[], o?: Parameters<typeof start>[1]): Promise<Result> =>
  start(args, o).done;

/** Pids of the warm clients waiting in the test's cache dir. */
function waiting(): number[] {
  const dir = join(cache, 'warm');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((n) => n.endsWith('.sock'))
    .map((n) => Number(/-(\d+)\.sock$/.exec(n)?.[1]));
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Warm clients wait (the previous command left one; two may): their pids. */
const warmPids = (): Promise<number[]> =>
  waitFor('a warm client', () => {
    const pids = waiting().filter(alive);
    return pids.length > 0 && pids;
  });

/**
 * Waiting warm clients' pids, after a build that leaves one when none waits (a command killed
 * by a signal leaves none: the next one starts Node itself).
 */
async function ensureWarm(): Promise<number[]> {
  if (!waiting().some(alive)) await run(['build', ctx, '--progress', 'plain']);
  return warmPids();
}

/** The pid the command says ran it (KILN_DEBUG), else undefined (a process of its own). */
const servedBy = (r: Result): number | undefined => {
  const m = /run by the warm client process (\d+)/.exec(r.stderr);
  return m ? Number(m[1]) : undefined;
};

/** The warm client that ran `r` (failing when its own process ran it). */
function served(r: Result): number {
  const pid = servedBy(r);
  expect(pid, r.stderr).toBeDefined();
  return pid!;
}

beforeAll(async () => {
  tmp = makeTempDir('warm-client');
  cache = join(tmp.dir, 'cache');
  farm = await startWorkerlessFarm();
  addr = farm.addr;
  ctx = join(tmp.dir, 'ctx');
  await mkdir(ctx, { recursive: true });
  await writeFile(join(ctx, 'Dockerfile'), ENTITLEMENT_DOCKERFILE);
  // Leaves the first warm client.
  const first = await run(['build', ctx, '--progress', 'plain']);
  expect(first.stderr).toMatch(/\[ENTITLEMENT_DENIED\]/);
  expect(servedBy(first)).toBeUndefined();
}, 60_000);

afterAll(async () => {
  for (const pid of waiting()) if (alive(pid)) process.kill(pid, 'SIGTERM');
  await farm?.close();
  tmp?.remove();
});

describe('the warm client', () => {
  it('runs the next build, which reports as its own process would, and leaves a successor', async () => {
    await warmPids();
    const r = await run(['build', ctx, '--progress', 'plain']);
    const pid = served(r);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/needs entitlement network\.host.*\[ENTITLEMENT_DENIED\]/);
    await waitFor('the served process to exit', () => !alive(pid));
    const next = await warmPids();
    expect(next).not.toContain(pid);
    // The same command in a process of its own says the same.
    const own = await run(['build', ctx, '--progress', 'plain'], {
      env: { KILN_WARM_CLIENT: '0' },
    });
    expect(servedBy(own)).toBeUndefined();
    expect(own.code).toBe(1);
    expect(own.stderr).toBe(r.stderr.replace(/.*warm client.*\n/, ''));
    expect(waiting()).toEqual(expect.arrayContaining(next));
  }, 60_000);

  it("uses the command's stdin, stdout, cwd and environment", async () => {
    // stdout and the exit status: help is printed on stdout, exit 0.
    await warmPids();
    const help = await run(['build', '--help']);
    served(help);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: kiln build/m);
    // stdin (the Dockerfile), cwd (a relative context), the environment (only KILN_ADDR names
    // the farm: the warm client started without it).
    await warmPids();
    const other = join(tmp.dir, 'other');
    await mkdir(other, { recursive: true });
    const r = await run(['build', '-f', '-', '.', '--progress', 'plain'], {
      cwd: other,
      input: 'FROM scratch\nRUN --security=insecure true\n',
    });
    served(r);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/needs entitlement security\.insecure.*\[ENTITLEMENT_DENIED\]/);
  }, 60_000);

  it('gives the build the terminal it was started on', async () => {
    // script(1) runs the command on a new pseudo-terminal and copies what it prints to stdout.
    const onTty = (args: string[]): Promise<Result> =>
      run([], { argv0: ['script', '-qec', [BIN, ...args].join(' '), '/dev/null'] });
    await ensureWarm();
    const r = await onTty(['build', ctx]);
    served({ ...r, stderr: r.stdout });
    // --progress auto on a terminal: the terminal display, as without the warm client.
    expect(r.stdout).toMatch(/\[\+\] Building/);
    const own = await run([], {
      argv0: ['script', '-qec', `KILN_WARM_CLIENT=0 ${BIN} build ${ctx}`, '/dev/null'],
    });
    expect(own.stdout).toMatch(/\[\+\] Building/);
  }, 60_000);

  it('forwards a signal to the build it runs, and ends it when the command is killed', async () => {
    // No worker: a RUN waits for one until interrupted.
    const wait = join(tmp.dir, 'wait');
    await mkdir(wait, { recursive: true });
    await writeFile(join(wait, 'Dockerfile'), 'FROM scratch\nRUN ["/bin/true"]\n');
    await ensureWarm();
    let cmd = start(['build', wait, '--progress', 'plain']);
    await waitFor('the build to start', () => /run by the warm client process/.test(cmd.stderr()));
    cmd.child.kill('SIGINT');
    const interrupted = await cmd.done;
    const pid = served(interrupted);
    expect(interrupted.code ?? interrupted.signal).not.toBe(0);
    await waitFor('the served process to exit', () => !alive(pid));
    // Killed outright (nothing to forward): the warm client ends the build itself.
    await ensureWarm();
    cmd = start(['build', wait, '--progress', 'plain']);
    await waitFor('the build to start', () => /run by the warm client process/.test(cmd.stderr()));
    const orphan = servedBy({ code: null, signal: null, stdout: '', stderr: cmd.stderr() })!;
    cmd.child.kill('SIGKILL');
    await cmd.done;
    await waitFor('the orphaned build to end', () => !alive(orphan), { timeoutMs: 30_000 });
  }, 90_000);

  it('leaves a command that names a descriptor of its own to a process of its own', async () => {
    // `--secret id=s,src=<(cmd)` names /dev/fd/63: only the command's own process has it.
    const pids = await ensureWarm();
    const child = spawn(
      BIN,
      ['build', ctx, '--progress', 'plain', '--secret', 'id=s,src=/dev/fd/3'],
      {
        env: { ...process.env, KILN_CACHE_DIR: cache, KILN_ADDR: addr, KILN_DEBUG: '1' },
        stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
      },
    );
    const extra = child.stdio[3] as Socket;
    extra.on('error', () => undefined); // reset when the command ends without reading it
    extra.end('s3cret');
    // Nobody else keeps it: it ends once the command is gone (a warm client left by the command
    // does not hold it).
    const ended = new Promise((resolve) => extra.on('close', resolve));
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise((resolve) => child.on('close', resolve));
    expect(servedBy({ code: 0, signal: null, stdout: '', stderr })).toBeUndefined();
    expect(code).toBe(1);
    expect(stderr).toMatch(/\[ENTITLEMENT_DENIED\]/);
    expect(waiting()).toEqual(expect.arrayContaining(pids));
    await ended;
  }, 60_000);

  it('is not used when turned off', async () => {
    const pids = await ensureWarm();
    const off = await run(['build', ctx, '--progress', 'plain'], {
      env: { KILN_WARM_CLIENT: '0' },
    });
    expect(servedBy(off)).toBeUndefined();
    expect(off.code).toBe(1);
    expect(waiting()).toEqual(expect.arrayContaining(pids));
    expect(pids.every(alive)).toBe(true);
  }, 60_000);
});
