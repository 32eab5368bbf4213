import { spawn } from 'node:child_process';
import { appendFile, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundleEntries, waitFor } from '@kiln/testing';
import { OverlaySnapshotter, mountTemp } from './index.js';
import type { Snapshotter } from './index.js';

let dir: string;
let churn: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kiln-snap-crash-'));
  const bundles = await bundleEntries(
    { churn: 'services/worker/src/test-support/snapshot-churn.ts' },
    join(dir, 'bundle'),
  );
  churn = bundles.churn!;
}, 120_000);
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Every committed snapshot mounts and holds its own file; no directory is left without a record. */
async function checkConsistent(s: Snapshotter, root: string, tmp: string): Promise<void> {
  const list = await s.list();
  for (const i of list) {
    expect(i.kind).toBe('committed');
    const m = await mountTemp(await s.mounts(i.key), tmp);
    try {
      expect(await readFile(join(m.path, `f-${i.key}`), 'utf8')).toBe(i.key);
    } finally {
      await m.release();
    }
  }
  expect((await readdir(join(root, 'snapshots'))).length).toBe(list.length);
}

describe('snapshot metadata across kill -9', () => {
  it('reopens cleanly after the process is killed mid-change, with every acknowledged change', async () => {
    const root = join(dir, 'state');
    const tmp = join(dir, 'mnt');
    // Killed after more and more changes: at some point in a prepare, commit or remove.
    for (const [round, after] of [12, 31, 57].entries()) {
      const child = spawn(process.execPath, [churn, root, `r${round}`], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      const exited = new Promise((resolve) => child.once('exit', resolve));
      await waitFor(`${after} commits`, () => (out.match(/^committed /gm) ?? []).length >= after, {
        timeoutMs: 60_000,
        abort: () => (child.exitCode !== null ? `the churn exited (${child.exitCode})` : undefined),
      });
      child.kill('SIGKILL');
      await exited;
      const lines = out.split('\n');
      const said = (what: string): Set<string> =>
        new Set(lines.filter((l) => l.startsWith(`${what} `)).map((l) => l.slice(what.length + 1)));
      const removing = said('removing');
      const s = await OverlaySnapshotter.open({ root });
      const keys = new Set((await s.list()).map((i) => i.key));
      for (const k of said('committed')) if (!removing.has(k)) expect(keys).toContain(k);
      for (const k of said('removed')) expect(keys).not.toContain(k);
      // Active snapshots of the killed process are gone or still there, never half made.
      for (const k of keys) if (k.startsWith('active-')) await s.remove(k);
      await checkConsistent(s, root, tmp);
    }
  }, 300_000);

  it('ends the log at a torn line and does not append after it', async () => {
    const root = join(dir, 'torn');
    const s = await OverlaySnapshotter.open({ root });
    await s.prepare('a-w');
    await s.commit('a', 'a-w');
    await appendFile(join(root, 'metadata.jsonl'), '["b",{"id":9'); // a power loss mid-line
    const again = await OverlaySnapshotter.open({ root });
    expect((await again.list()).map((i) => i.key)).toEqual(['a']);
    await again.prepare('c-w', 'a');
    await again.commit('c', 'c-w');
    const third = await OverlaySnapshotter.open({ root });
    expect((await third.list()).map((i) => `${i.key}:${i.parent ?? ''}`)).toEqual(['a:', 'c:a']);
  });

  it('migrates the metadata.json of earlier versions', async () => {
    const root = join(dir, 'legacy');
    const s = await OverlaySnapshotter.open({ root });
    await s.prepare('a-w');
    await s.commit('a', 'a-w');
    await s.prepare('b-w', 'a');
    await s.commit('b', 'b-w');
    // The same records as the JSON file an earlier version wrote.
    const log = (await readFile(join(root, 'metadata.jsonl'), 'utf8')).trim().split('\n');
    const header = JSON.parse(log[0]!) as { backend: string };
    const snapshots: Record<string, unknown> = {};
    for (const l of log.slice(1)) {
      const [k, r] = JSON.parse(l) as [string, { id: number } | null];
      if (r === null) delete snapshots[k];
      else snapshots[k] = r;
    }
    await writeFile(
      join(root, 'metadata.json'),
      JSON.stringify({ version: 1, backend: header.backend, nextId: 3, snapshots }),
    );
    await rm(join(root, 'metadata.jsonl'));
    const again = await OverlaySnapshotter.open({ root });
    expect((await again.list()).map((i) => `${i.key}:${i.parent ?? ''}`)).toEqual(['a:', 'b:a']);
    expect(await readdir(root)).not.toContain('metadata.json');
    expect((await readdir(join(root, 'snapshots'))).length).toBe(2);
  });
});
