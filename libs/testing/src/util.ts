// Small test helpers: free ports, the one poller (waitFor), binaries, temp dirs.

import { execFile } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { pidAlive } from '@kiln/common';

export const SETUP_HINT = 'run `bash scripts/setup.sh` as root to install and prepare it';

/** The repository root (this file is libs/testing/src/util.ts, or libs/testing/dist/util.js). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** A TCP port that was free on 127.0.0.1 a moment ago (callers retry when they lose a race). */
export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolvePort(port));
    });
  });
}

export interface WaitOptions {
  timeoutMs?: number;
  intervalMs?: number;
  /** Checked between polls: a string aborts the wait with that message (e.g. "process exited"). */
  abort?: () => string | undefined;
}

/** Polls `check` until it returns a value other than undefined/false, or fails after a timeout. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  opts: WaitOptions = {},
): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const intervalMs = opts.intervalMs ?? 25;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    const aborted = opts.abort?.();
    if (aborted !== undefined) throw new Error(`${what}: ${aborted}`);
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const detail = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

const EXTRA_BIN_DIRS = [
  '/usr/local/sbin',
  '/usr/local/bin',
  '/usr/sbin',
  '/usr/bin',
  '/sbin',
  '/bin',
];

/** Absolute path of an executable on PATH (plus the sbin dirs), or undefined. */
export function whichBinary(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), ...EXTRA_BIN_DIRS];
  for (const d of dirs) {
    const p = join(d, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Like whichBinary, but fails with a message that says how to install it. */
export function requireBinary(name: string): string {
  const p = whichBinary(name);
  if (!p) throw new Error(`${name} not found; ${SETUP_HINT}`);
  return p;
}

const tempDirs = new Set<string>();
let tempHookInstalled = false;

/**
 * A fresh temp directory (/tmp/kiln-test-<prefix>-<pid>-XXXXXX) and its remover. Directories not
 * removed by then are removed when the process exits (and by sweepStaleTempDirs() after a SIGKILL).
 */
export function makeTempDir(prefix: string): { dir: string; remove: () => void } {
  if (!tempHookInstalled) {
    tempHookInstalled = true;
    process.on('exit', () => {
      for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
    });
  }
  const dir = mkdtempSync(join(tmpdir(), `kiln-test-${prefix}-${process.pid}-`));
  tempDirs.add(dir);
  return {
    dir,
    remove: () => {
      rmSync(dir, { recursive: true, force: true });
      tempDirs.delete(dir);
    },
  };
}

/** Removes /tmp/kiln-test-*-<pid>-* directories whose process is gone (left by a killed run). */
export function sweepStaleTempDirs(): void {
  let names: string[];
  try {
    names = readdirSync(tmpdir());
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^kiln-test-.+-(\d+)-[A-Za-z0-9]{6}$/.exec(name);
    if (!m || pidAlive(Number(m[1]))) continue;
    try {
      rmSync(join(tmpdir(), name), { recursive: true, force: true });
    } catch (err) {
      // Still mounted under it (a killed worker's mount): not a reason to stop every test run.
      process.stderr.write(`kiln test harness: left ${name}: ${(err as Error).message}\n`);
    }
  }
}

/** The `code` of the error `f` throws (a KilnError's), or undefined when it does not throw. */
export function thrownCode(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

/** `v` as JSON bytes (a wire message, for decoders under test). */
export const jsonBytes = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));

/** The IPv4 addresses of this host's network namespace, loopback excepted (`ip -4 -o addr`). */
export async function hostIpv4Addresses(): Promise<string[]> {
  const { stdout } = await promisify(execFile)('ip', ['-4', '-o', 'addr']);
  return stdout
    .split('\n')
    .map((l) => /inet (\d+\.\d+\.\d+\.\d+)/.exec(l)?.[1])
    .filter((a): a is string => a !== undefined && !a.startsWith('127.'));
}
