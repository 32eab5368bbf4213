/**
 * Faults on the local farm (issue 16): a `kiln build` killed with -9, or the farm daemon killed
 * with -9, mid-RUN, and then the same build again; a build interrupted (SIGINT) mid-RUN whose RUN
 * must then never run. Real processes: `kiln` bundled from source and run as a child process, the
 * farm daemon, its nats-server and crun. A RUN is observed through its cache mount (a directory
 * under the worker's state dir) and through the host's /proc (its `sleep` has a unique argument).
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { bundleEntries, makeTempDir, waitFor } from '../harness/index.js';
import { bundleFarmDaemon } from './local-farm-daemon.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;

let tmp: { dir: string; remove: () => void };
let stateDir: string;
let kilnBin: string;
const children: ChildProcess[] = [];

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  tmp = makeTempDir('local-farm-faults');
  stateDir = join(tmp.dir, 'state');
  process.env.KILN_STATE_DIR = stateDir;
  process.env.KILN_FARM_DAEMON = await bundleFarmDaemon(join(tmp.dir, 'bundle'));
  kilnBin = (await bundleEntries({ kiln: 'test/src/e2e/kiln-bin.ts' }, join(tmp.dir, 'bin'))).kiln!;
}, 120_000);

afterAll(async () => {
  // A build a failed test left running would hold the farm's stop (it drains builds).
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await kiln(['farm', 'stop']);
  delete process.env.KILN_STATE_DIR;
  delete process.env.KILN_FARM_DAEMON;
  tmp?.remove();
});

/** A build context whose Dockerfile is `lines` after `FROM` the fixture image. */
async function context(name: string, lines: string[]): Promise<string> {
  const dir = join(tmp.dir, name);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'Dockerfile'), ['ARG BASE', 'FROM ${BASE}', ...lines, ''].join('\n'));
  return dir;
}

const buildArgs = (ctx: string): string[] => [
  'build',
  ctx,
  '--progress',
  'plain',
  '--build-arg',
  `BASE=${fixture}`,
];

/**
 * `kiln` as a child process (output collected). Every command of this file runs so: the farm it
 * starts is then the one the next command finds (a client of other code would replace it).
 */
function spawnKiln(args: string[]): {
  child: ChildProcess;
  out: () => string;
  exited: Promise<number | null>;
} {
  const child = spawn(process.execPath, [kilnBin, ...args], {
    env: process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, out: () => out, exited };
}

const spawnBuild = (ctx: string): ReturnType<typeof spawnKiln> => spawnKiln(buildArgs(ctx));

/** `kiln build ctx` as a child process, once `started()` says its RUN runs. */
async function buildUntil(
  ctx: string,
  what: string,
  started: () => boolean,
): Promise<ReturnType<typeof spawnKiln>> {
  const b = spawnBuild(ctx);
  await waitFor(what, started, {
    timeoutMs: 90_000,
    abort: () => (b.child.exitCode !== null ? `kiln exited:\n${b.out()}` : undefined),
  });
  return b;
}

/** Runs `kiln args` to its end. */
async function kiln(args: string[]): Promise<{ code: number | null; out: string }> {
  const k = spawnKiln(args);
  const code = await k.exited;
  return { code, out: k.out() };
}

/** Paths of the files named `name` in the worker's cache mounts. */
function cacheFiles(name: string): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.isDirectory()) walk(join(dir, e.name));
      else if (e.name === name) out.push(join(dir, e.name));
    }
  };
  walk(join(stateDir, 'worker', 'exec', 'cache-mounts'));
  return out;
}

/** Lines of the cache-mount file `name` (each start of the RUN appends one). */
function starts(name: string): number {
  return cacheFiles(name).reduce(
    (n, f) => n + readFileSync(f, 'utf8').split('\n').filter(Boolean).length,
    0,
  );
}

/** Pids of the processes of a RUN, found by its unique `sleep <seconds>` (busybox's sh runs it). */
function sleepers(seconds: number): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ');
      if (argv.includes(`sleep ${seconds};`) || argv === `sleep ${seconds} `) out.push(Number(p));
    } catch {
      // gone
    }
  }
  return out;
}

async function farmPid(): Promise<number> {
  return (JSON.parse(await readFile(join(stateDir, 'farm.json'), 'utf8')) as { pid: number }).pid;
}

/** A RUN that notes each start in its cache mount, then sleeps `seconds` (a unique number). */
function noisyRun(marker: string, seconds: number, after = 'true'): string {
  return `RUN --mount=type=cache,target=/c sh -c 'echo x >> /c/${marker}; sleep ${seconds}; ${after}'`;
}

describe('the local farm under faults', () => {
  it('kill -9 of kiln build mid-RUN: the same build again completes', async () => {
    const seconds = 3 + randomInt(1000) / 1000;
    const marker = `crash-client-${randomInt(1e9)}`;
    const ctx = await context('ctx-crash-client', [noisyRun(marker, seconds), 'RUN echo ok > /ok']);
    const b = await buildUntil(ctx, 'the RUN to start', () => starts(marker) > 0);
    b.child.kill('SIGKILL');
    await b.exited;
    const again = await kiln(buildArgs(ctx));
    expect(again.code, again.out).toBe(0);
  }, 120_000);

  it('kill -9 of the farm daemon mid-RUN: the same build again completes on a new farm', async () => {
    const seconds = 3 + randomInt(1000) / 1000;
    const marker = `crash-farm-${randomInt(1e9)}`;
    const ctx = await context('ctx-crash-farm', [noisyRun(marker, seconds), 'RUN echo ok > /ok']);
    const b = await buildUntil(ctx, 'the RUN to start', () => starts(marker) > 0);
    process.kill(await farmPid(), 'SIGKILL');
    await b.exited;
    const again = await kiln(buildArgs(ctx));
    expect(again.code, again.out).toBe(0);
    expect(starts(marker)).toBe(2);
  }, 120_000);

  it('SIGINT mid-RUN: the cancelled RUN stops and never runs again', async () => {
    // A long RUN: were it left running or started again, its sleep would be seen in /proc.
    const seconds = 600 + randomInt(1000) / 1000;
    const marker = `cancelled-${randomInt(1e9)}`;
    const ctx = await context('ctx-cancel', [
      noisyRun(marker, seconds, `echo x >> /c/${marker}.done`),
    ]);
    const b = await buildUntil(
      ctx,
      'the RUN to start',
      () => starts(marker) > 0 && sleepers(seconds).length > 0,
    );
    b.child.kill('SIGINT');
    expect(await b.exited, b.out()).not.toBe(0);
    await waitFor('the cancelled RUN to stop', () => sleepers(seconds).length === 0, {
      timeoutMs: 30_000,
    });
    // Another build on the same farm (its worker takes whatever is queued for it).
    const other = await context('ctx-after-cancel', [`RUN echo ${randomInt(1e9)} > /other`]);
    const res = await kiln(buildArgs(other));
    expect(res.code, res.out).toBe(0);
    const again = await kiln(buildArgs(other));
    expect(again.code, again.out).toBe(0);
    expect(sleepers(seconds)).toEqual([]);
    expect(starts(marker)).toBe(1);
    expect(cacheFiles(`${marker}.done`)).toEqual([]);
  }, 180_000);

  it('a farm that died with a RUN waiting for a slot: the next farm never runs that RUN', async () => {
    await kiln(['farm', 'stop']);
    const started = await kiln(['farm', 'start', '--slots', '1']);
    expect(started.code, started.out).toBe(0);
    const seconds = [600 + randomInt(1000) / 1000, 700 + randomInt(1000) / 1000];
    const markers = [`queued-a-${randomInt(1e9)}`, `queued-b-${randomInt(1e9)}`];
    // Two stages ready at once on one slot: one RUN runs, the other waits on the task queue.
    const ctx = await context('ctx-farm-died', [
      noisyRun(markers[0]!, seconds[0]!),
      'FROM ${BASE} AS b',
      noisyRun(markers[1]!, seconds[1]!),
      'FROM ${BASE}',
      'COPY --from=0 /etc/hostname /a',
      'COPY --from=b /etc/hostname /b',
    ]);
    const total = (): number => markers.reduce((n, m) => n + starts(m), 0);
    const b = await buildUntil(ctx, 'one RUN to start', () => total() > 0);
    process.kill(await farmPid(), 'SIGKILL');
    await b.exited;
    // The next farm on this state dir, and a build of something else on it.
    const other = await context('ctx-after-death', [`RUN echo ${randomInt(1e9)} > /other`]);
    const res = await kiln(buildArgs(other));
    expect(res.code, res.out).toBe(0);
    const again = await kiln(buildArgs(other));
    expect(again.code, again.out).toBe(0);
    // The RUN that was waiting belonged to a build that is gone: it never ran.
    expect(total()).toBe(1);
    // And the one that ran when the farm died was stopped by the next farm.
    await waitFor("the dead farm's RUN to be stopped", () =>
      seconds.every((s) => sleepers(s).length === 0),
    );
  }, 240_000);
});
