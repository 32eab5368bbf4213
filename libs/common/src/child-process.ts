// Child processes that cannot outlive the process that started them (test runs, the CLI's
// embedded farm).
//
// Every process is started under a tiny `sh` guard that holds the read end of a pipe from this
// Node process (its stdin). When this process goes away for any reason (normal exit, a crash, or
// SIGKILL of the test runner, where no handler runs), the pipe reaches EOF and the guard kills the
// real process. A process 'exit' handler also kills every live child synchronously, and `stop()`
// terminates it gracefully (SIGTERM, then SIGKILL of its whole process group after a timeout).

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';

// $@ is the command. fd 3 keeps the pipe from Node; asynchronous lists get /dev/null as stdin in a
// non-interactive shell, hence the explicit `<&3`.
export const GUARD_SCRIPT = `
exec 3<&0 </dev/null
"$@" 3<&- &
c=$!
trap 'kill -TERM "$c" 2>/dev/null' TERM INT HUP
{ while read -r _ <&3; do :; done; kill -TERM "$c" 2>/dev/null; } &
w=$!
exec 3<&-
while :; do
  wait "$c"; rc=$?
  kill -0 "$c" 2>/dev/null || break
done
kill "$w" 2>/dev/null
exit "$rc"
`;

export interface SpawnOptions {
  /** Name used in error messages (default: the command's basename). */
  name?: string;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Called for each line of stdout and stderr. */
  onLine?: (line: string, stream: 'stdout' | 'stderr') => void;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ManagedProcess {
  readonly name: string;
  /** pid of the guard (also the process group id of the guard and the real process). */
  readonly pid: number;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<ExitInfo>;
  /** Whether the process has exited. */
  hasExited(): boolean;
  /** The last ~64 KiB of stdout and stderr, for error messages. */
  output(): string;
  /** Sends a signal to the real process (through the guard's process group). */
  kill(signal?: NodeJS.Signals): void;
  /** SIGTERM, wait up to `timeoutMs` (default 10 s), then SIGKILL. Idempotent. */
  stop(timeoutMs?: number): Promise<ExitInfo>;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) killGroup(child, 'SIGKILL');
  });
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      // already gone
    }
  }
}

const MAX_OUTPUT = 64 * 1024;

/** Starts `command args...` under the guard. */
export function spawnManaged(
  command: string,
  args: readonly string[],
  opts: SpawnOptions = {},
): ManagedProcess {
  installExitHook();
  const name = opts.name ?? command.split('/').pop() ?? command;
  const child = spawn('/bin/sh', ['-c', GUARD_SCRIPT, 'kiln-guard', command, ...args], {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true, // own process group: stop() can SIGKILL the guard and the process together
  });
  if (child.pid === undefined) throw new Error(`${name}: spawn failed`);
  live.add(child);
  const pid = child.pid;

  let out = '';
  const partial = { stdout: '', stderr: '' };
  const onData = (stream: 'stdout' | 'stderr') => (buf: Buffer) => {
    const text = buf.toString('utf8');
    out += text;
    if (out.length > MAX_OUTPUT) out = out.slice(out.length - MAX_OUTPUT);
    if (opts.onLine) {
      const lines = (partial[stream] + text).split('\n');
      partial[stream] = lines.pop() ?? '';
      for (const l of lines) opts.onLine(l, stream);
    }
  };
  child.stdout.on('data', onData('stdout'));
  child.stderr.on('data', onData('stderr'));
  child.stdin.on('error', () => {
    // EPIPE when the guard is gone: nothing to do
  });

  let done = false;
  const exited = new Promise<ExitInfo>((resolve) => {
    child.on('error', () => {
      done = true;
      live.delete(child);
      resolve({ code: null, signal: null });
    });
    child.on('exit', (code, signal) => {
      done = true;
      live.delete(child);
      resolve({ code, signal });
    });
  });

  let stopping: Promise<ExitInfo> | undefined;
  return {
    name,
    pid,
    exited,
    hasExited: () => done,
    output: () => out,
    kill: (signal: NodeJS.Signals = 'SIGTERM') => {
      if (!done) killGroup(child, signal);
    },
    stop: (timeoutMs = 10_000) => {
      stopping ??= (async () => {
        if (done) return exited;
        child.kill('SIGTERM'); // the guard forwards it to the real process
        let timer: NodeJS.Timeout | undefined;
        const timedOut = new Promise<'timeout'>((resolve) => {
          timer = setTimeout(() => resolve('timeout'), timeoutMs);
        });
        const first = await Promise.race([exited, timedOut]);
        clearTimeout(timer);
        if (first === 'timeout') killGroup(child, 'SIGKILL');
        const info = await exited;
        child.stdin.destroy();
        return info;
      })();
      return stopping;
    },
  };
}

/** Whether `pid` is a live process (not a zombie waiting to be reaped). */
export function pidAlive(pid: number): boolean {
  if (!(pid > 0)) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A zombie (exited, not yet reaped by its parent) is not alive.
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}
