import { PassThrough } from 'node:stream';
import type { StatusResponse } from './kiln-client.js';
import { describe, expect, it } from 'vitest';
import { createPrinter } from './progress.js';
import { StatusEvents } from './status-events.js';

const ns = (ms: number): number => ms * 1e6;

/** The tty view's final frame for these status frames, escape codes removed. */
function ttyFrame(frames: Partial<StatusResponse>[]): string {
  const out = new PassThrough();
  const chunks: string[] = [];
  out.on('data', (c: Buffer) => chunks.push(c.toString()));
  const printer = createPrinter('tty', out, 1000);
  const events = new StatusEvents((e) => printer.onEvent(e));
  for (const f of frames)
    events.push({ vertexes: [], statuses: [], logs: [], ...f } as StatusResponse);
  printer.finish();
  // eslint-disable-next-line no-control-regex -- the terminal's escape sequences are what is removed
  const text = chunks.join('').replace(/\x1b\[[0-9]*[A-Za-z]/g, '');
  return text.slice(text.lastIndexOf('[+] Building'));
}

describe('the tty progress view', () => {
  it('marks the failed step and cached steps as BuildKit does; an export is never CACHED', () => {
    const frame = ttyFrame([
      {
        vertexes: [
          {
            digest: 'a',
            name: '[1/3] FROM busybox',
            cached: true,
            startedUnixNano: ns(1000),
            completedUnixNano: ns(1000),
          },
          {
            digest: 'b',
            name: '[2/3] RUN false',
            startedUnixNano: ns(1000),
            completedUnixNano: ns(1300),
            error: 'exit code 1',
          },
          {
            digest: 'export-0',
            name: 'exporting to tar',
            cached: true,
            startedUnixNano: ns(1300),
            completedUnixNano: ns(1400),
          },
        ],
      },
    ]);
    expect(frame).toMatch(/=> CACHED \[1\] \[1\/3\] FROM busybox/);
    expect(frame).toMatch(/=> ERROR \[2\] \[2\/3\] RUN false +0\.3s/);
    expect(frame).toMatch(/=> \[3\] exporting to tar +0\.1s/);
    expect(frame).not.toMatch(/CACHED \[3\]/);
    expect(frame).toContain('ERROR: exit code 1');
  });
});
