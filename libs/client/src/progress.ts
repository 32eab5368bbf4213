/**
 * `@kiln/client/progress`: build progress for people, in BuildKit's two styles (the `kiln` CLI's
 * own). `plain`: numbered steps, one line per event (`#3 [2/3] RUN make`, `#3 0.412 output...`,
 * `#3 DONE 1.2s`, `#2 CACHED`), for CI logs. `tty`: the same steps redrawn in place with timings,
 * and a live tail of each running step's output. `auto`: tty on a terminal, else plain.
 *
 * Feed it `ProgressEvent`s (`client.build({ onProgress: printer.onEvent })`, or
 * `StatusEvents` over `client.status()` frames) and call `finish()` once the build is over.
 */
import type { Writable } from 'node:stream';
import type { ProgressEvent } from './progress-event.js';

export type { ProgressEvent } from './progress-event.js';
export { StatusEvents } from './status-events.js';

interface Step {
  n: number;
  name: string;
  started: number;
  state: 'running' | 'done' | 'cached' | 'error';
  durationMs: number;
  tail: string[];
  partial: string;
}

export interface ProgressPrinter {
  /** Takes one event; a plain function (no `this`), so it can be passed as a callback. */
  readonly onEvent: (e: ProgressEvent) => void;
  /** Final redraw (tty); stops the redraw timer. Call it once the build is over, failed or not. */
  readonly finish: () => void;
}

export type ProgressMode = 'auto' | 'tty' | 'plain';

const secs = (ms: number): string => `${(ms / 1000).toFixed(1)}s`;

/** A printer writing to `out` (`process.stderr`, say); `startTime` is the build's start. */
export function createPrinter(
  mode: ProgressMode,
  out: Writable & { isTTY?: boolean },
  startTime = Date.now(),
): ProgressPrinter {
  if (mode === 'auto') mode = out.isTTY ? 'tty' : 'plain';
  const steps = new Map<string, Step>();
  let next = 1;
  const step = (digest: string, name: string, time: number): Step => {
    let s = steps.get(digest);
    if (!s) {
      s = {
        n: next++,
        name,
        started: time,
        state: 'running',
        durationMs: 0,
        tail: [],
        partial: '',
      };
      steps.set(digest, s);
    }
    return s;
  };

  if (mode === 'plain') {
    return {
      onEvent: (e) => {
        if (e.type === 'vertex.log') {
          const s = steps.get(e.digest);
          if (!s) return;
          const text = s.partial + e.text;
          const lines = text.split('\n');
          s.partial = lines.pop() ?? '';
          for (const l of lines)
            out.write(
              `#${s.n} ${secs(e.time - s.started)
                .slice(0, -1)
                .padStart(5)} ${l}\n`,
            );
          return;
        }
        if (e.type === 'vertex.status') return;
        const known = steps.has(e.digest);
        const s = step(e.digest, e.name, e.time);
        if (e.type === 'vertex.started') out.write(`#${s.n} ${s.name}\n`);
        else if (e.type === 'vertex.cached')
          out.write(known ? `#${s.n} CACHED\n` : `#${s.n} ${s.name}\n#${s.n} CACHED\n`);
        else if (e.type === 'vertex.completed') {
          if (s.partial) out.write(`#${s.n} ${s.partial}\n`);
          out.write(`#${s.n} DONE ${secs(e.durationMs)}\n`);
        } else if (e.type === 'vertex.error') out.write(`#${s.n} ERROR: ${e.error}\n`);
      },
      finish: () => undefined,
    };
  }

  // tty: redraw the whole list in place.
  let drawn = 0;
  let timer: NodeJS.Timeout | undefined;
  const redraw = (final: boolean): void => {
    const lines: string[] = [
      `[+] Building ${secs(Date.now() - startTime)} (${[...steps.values()].filter((s) => s.state !== 'running').length}/${steps.size})${final ? ' FINISHED' : ''}`,
    ];
    for (const s of steps.values()) {
      const t =
        s.state === 'running'
          ? secs(Date.now() - s.started)
          : s.state === 'cached'
            ? '0.0s'
            : secs(s.durationMs);
      // As BuildKit's tty view: the failed step and the cached ones are marked before the name.
      const mark = s.state === 'error' ? 'ERROR ' : s.state === 'cached' ? 'CACHED ' : '';
      lines.push(` => ${mark}[${s.n}] ${s.name.slice(0, 90)}`.padEnd(100) + ` ${t}`);
      if (s.state === 'running' || s.state === 'error')
        for (const l of s.tail.slice(-6)) lines.push(` => => ${l.slice(0, 110)}`);
    }
    let text = '';
    if (drawn > 0) text += `\x1b[${drawn}A`;
    for (const l of lines) text += `\x1b[2K${l}\n`;
    // Clear what a taller previous frame left below (a finished step's output tail).
    text += '\x1b[J';
    out.write(text);
    drawn = lines.length;
  };
  return {
    onEvent: (e) => {
      if (e.type === 'vertex.log') {
        const s = steps.get(e.digest);
        if (!s) return;
        const parts = (s.partial + e.text).split('\n');
        s.partial = parts.pop() ?? '';
        s.tail.push(...parts);
        if (s.tail.length > 50) s.tail.splice(0, s.tail.length - 50);
      } else if (e.type !== 'vertex.status') {
        const s = step(e.digest, e.name, e.time);
        if (e.type === 'vertex.cached') s.state = 'cached';
        else if (e.type === 'vertex.completed') {
          s.state = 'done';
          s.durationMs = e.durationMs;
        } else if (e.type === 'vertex.error') {
          s.state = 'error';
          s.durationMs = Math.max(0, e.time - s.started);
          s.tail.push(`ERROR: ${e.error}`);
        }
      }
      timer ??= setInterval(() => redraw(false), 150);
    },
    finish: () => {
      if (timer) clearInterval(timer);
      redraw(true);
    },
  };
}
