/**
 * The local farm: `kiln build` without --addr starts a daemon on first use and keeps using it;
 * a crashed, hung or differently configured one is replaced; `kiln farm start|stop|status`; the
 * idle timeout. Real processes throughout (the daemon bundled from source, its nats-server, crun),
 * against the fixture busybox image in the harness's registry.
 */
import { execFile } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { connectNats } from '@kiln/bus';
import { REPO_ROOT, makeTempDir, waitFor } from '../harness/index.js';
import { bundleFarmDaemon } from './local-farm-daemon.js';
import { runKiln } from './run-kiln.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
const run = promisify(execFile);

interface FarmJson {
  pid: number;
  socket: string;
  insecureRegistries: string[];
  idleTimeoutMs: number;
}

let tmp: { dir: string; remove: () => void };
let stateDir: string;
let ctx: string;

const kiln = (args: string[]) => runKiln(args);

const build = (...extra: string[]): Promise<{ code: number; out: string }> =>
  kiln(['build', ctx, '--progress', 'plain', '--build-arg', `BASE=${fixture}`, ...extra]);

async function farmJson(): Promise<FarmJson | undefined> {
  try {
    return JSON.parse(await readFile(join(stateDir, 'farm.json'), 'utf8')) as FarmJson;
  } catch {
    return undefined;
  }
}

/** A live process (an exited child not yet reaped, a zombie, is not). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** A farm record to forge from: the fields a real one has. */
function farmJsonOf(dir: string): Record<string, unknown> {
  return {
    socket: join(dir, 'farm.sock'),
    stamp: 'x',
    insecureRegistries: [],
    platforms: ['linux/amd64'],
    slots: 16,
    idleTimeoutMs: 0,
    startedAt: new Date().toISOString(),
  };
}

async function readyCount(): Promise<number> {
  const log = await readFile(join(stateDir, 'logs', 'farm.log'), 'utf8').catch(() => '');
  return log.split('\n').filter((l) => l.includes('"local farm ready"')).length;
}

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  tmp = makeTempDir('local-farm');
  stateDir = join(tmp.dir, 'state');
  ctx = join(tmp.dir, 'ctx');
  process.env.KILN_STATE_DIR = stateDir;
  process.env.KILN_FARM_DAEMON = await bundleFarmDaemon(join(tmp.dir, 'bundle'));
  await mkdir(ctx, { recursive: true });
  await writeFile(join(ctx, 'a.txt'), 'hello\n');
  await writeFile(
    join(ctx, 'Dockerfile'),
    'ARG BASE\nFROM ${BASE}\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b.txt\n',
  );
}, 120_000);

afterAll(async () => {
  await kiln(['farm', 'stop']);
  delete process.env.KILN_STATE_DIR;
  delete process.env.KILN_FARM_DAEMON;
  tmp?.remove();
});

describe('the local farm', () => {
  it('starts on first use and stays up: the next build uses the same farm and its cache', async () => {
    const first = await build();
    expect(first.code, first.out).toBe(0);
    const farm = await farmJson();
    expect(farm).toBeDefined();
    expect(alive(farm!.pid)).toBe(true);

    const second = await build();
    expect(second.code, second.out).toBe(0);
    expect((await farmJson())?.pid).toBe(farm!.pid);
    expect(second.out).toMatch(/RUN cat \/a.txt > \/b.txt\n#\d+ CACHED/);

    const status = await kiln(['farm', 'status', '--json']);
    expect(status.code).toBe(0);
    const s = JSON.parse(status.out) as {
      state: string;
      info: { pid: number; platforms: string[] };
    };
    expect(s.state).toBe('running');
    expect(s.info.pid).toBe(farm!.pid);
    expect(s.info.platforms).toContain('linux/amd64');

    // Its bus is closed to everyone but the farm itself: users generated at start, in a 0600 file.
    expect(statSync(join(stateDir, 'nats-server.conf')).mode & 0o777).toBe(0o600);
    const portsDir = join(stateDir, 'nats-ports');
    const portsFile = readdirSync(portsDir).find((f) => f.endsWith('.ports'));
    expect(portsFile).toBeDefined();
    const url = (JSON.parse(readFileSync(join(portsDir, portsFile!), 'utf8')) as { nats: string[] })
      .nats[0];
    const anon = await connectNats(url ?? '', {}, { maxReconnectAttempts: 0 }).catch(
      (err: unknown) => err,
    );
    expect(anon).toMatchObject({ code: 'BUS_AUTH' });
  }, 180_000);

  it('runs RUN --security=insecure only when the build asks for it with --allow', async () => {
    const dir = join(tmp.dir, 'ctx-insecure');
    await mkdir(dir, { recursive: true });
    // Mounting needs CAP_SYS_ADMIN: only the insecure mode has it.
    await writeFile(
      join(dir, 'Dockerfile'),
      'ARG BASE\nFROM ${BASE}\nRUN --security=insecure mkdir -p /m && mount -t tmpfs none /m\n',
    );
    const args = ['build', dir, '--progress', 'plain', '--build-arg', `BASE=${fixture}`];
    const refused = await kiln(args);
    expect(refused.code).toBe(1);
    expect(refused.out).toMatch(
      /RUN --security=insecure mkdir[^\n]* \(line 3\) needs entitlement security\.insecure: the build did not ask for it: pass --allow security\.insecure/,
    );
    expect(refused.out).toMatch(/\[ENTITLEMENT_DENIED\]/);
    const allowed = await kiln([...args, '--allow', 'security.insecure']);
    expect(allowed.code, allowed.out).toBe(0);
    const bad = await kiln([...args, '--allow', 'root']);
    expect(bad.code).toBe(1);
    expect(bad.out).toMatch(/--allow root: want security\.insecure or network\.host/);
  }, 180_000);

  it('replaces a crashed farm (its leftovers stay behind) without waiting for it', async () => {
    const before = (await build()).code === 0 ? await farmJson() : undefined;
    expect(before).toBeDefined();
    process.kill(before!.pid, 'SIGKILL');
    await waitFor('the killed farm to be gone', () => !alive(before!.pid));
    const res = await build();
    expect(res.code, res.out).toBe(0);
    const after = await farmJson();
    expect(after?.pid).not.toBe(before!.pid);
    expect(alive(after!.pid)).toBe(true);
  }, 180_000);

  it('treats a farm.json whose pid now belongs to another process as dead, and leaves that process alone', async () => {
    await kiln(['farm', 'stop']);
    // This test's own process stands for the unrelated process that got the pid; a socket file
    // is left over too. Were the record trusted, the build would wait on it or kill it.
    const stale = { ...farmJsonOf(stateDir), pid: process.pid, startTime: '1' };
    await writeFile(join(stateDir, 'farm.json'), JSON.stringify(stale));
    await writeFile(join(stateDir, 'farm.sock'), '');
    const res = await build();
    expect(res.code, res.out).toBe(0);
    expect((await farmJson())?.pid).not.toBe(process.pid);
  }, 180_000);

  it('replaces a hung farm (alive, not answering) instead of waiting on it', async () => {
    const before = await farmJson();
    expect(before && alive(before.pid)).toBe(true);
    process.kill(before!.pid, 'SIGSTOP');
    try {
      const res = await build();
      expect(res.code, res.out).toBe(0);
      expect(res.out).toContain(`the local farm (pid ${before!.pid}) does not answer`);
      const after = await farmJson();
      expect(after?.pid).not.toBe(before!.pid);
      await waitFor('the hung farm to be killed', () => !alive(before!.pid));
    } finally {
      if (alive(before!.pid)) process.kill(before!.pid, 'SIGCONT');
    }
  }, 180_000);

  it('is replaced, with both settings, when a build needs an insecure registry it lacks', async () => {
    const before = await farmJson();
    const res = await build('--insecure-registry', 'registry.invalid:5000');
    expect(res.code, res.out).toBe(0);
    const after = await farmJson();
    expect(after?.pid).not.toBe(before?.pid);
    expect(after?.insecureRegistries).toEqual(['registry.invalid:5000']);
    await waitFor('the old farm to exit', () => !alive(before!.pid));
    // The same settings again: the farm stays.
    const again = await build('--insecure-registry', 'registry.invalid:5000');
    expect(again.code, again.out).toBe(0);
    expect((await farmJson())?.pid).toBe(after!.pid);
  }, 180_000);

  it('kiln farm stop stops it; concurrent builds then start one farm between them', async () => {
    expect((await kiln(['farm', 'start'])).code).toBe(0);
    const before = await farmJson();
    const stop = await kiln(['farm', 'stop']);
    expect(stop.code).toBe(0);
    expect(stop.out).toContain(`stopped (pid ${before!.pid})`);
    expect(alive(before!.pid)).toBe(false);
    expect(await farmJson()).toBeUndefined();
    const status = await kiln(['farm', 'status']);
    expect(status.code).toBe(1);
    expect(status.out).toMatch(/^stopped/);

    const started = await readyCount();
    const both = await Promise.all([build(), build()]);
    for (const r of both) expect(r.code, both.map((b) => b.out).join('\n----\n')).toBe(0);
    expect(await readyCount()).toBe(started + 1);
  }, 180_000);

  it('runs as shipped: the bundled bin/kiln.js answers farm status (needs npm run build)', async () => {
    const bin = join(REPO_ROOT, 'cli', 'bin', 'kiln.js');
    const version = await run(process.execPath, [bin, '--version']);
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
    const status = await run(process.execPath, [bin, 'farm', 'status', '--json'], {
      env: { ...process.env, KILN_STATE_DIR: join(tmp.dir, 'never-started') },
    }).then(
      (r) => ({ code: 0, stdout: r.stdout }),
      (e: { code: number; stdout: string }) => e,
    );
    expect(status.code).toBe(1);
    expect(JSON.parse(status.stdout)).toMatchObject({ state: 'stopped' });
  }, 60_000);

  it('stops by itself after its idle timeout', async () => {
    await kiln(['farm', 'stop']);
    const res = await kiln(['farm', 'start', '--idle-timeout', '1s']);
    expect(res.code, res.out).toBe(0);
    const farm = await farmJson();
    expect(farm?.idleTimeoutMs).toBe(1000);
    await waitFor('the idle farm to stop', () => !alive(farm!.pid), { timeoutMs: 60_000 });
    expect(await farmJson()).toBeUndefined();
  }, 120_000);
});
