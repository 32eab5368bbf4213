/**
 * The whole Dockerfile corpus (test/corpus) on a root worker, a rootless worker (the worker entry
 * started as the unprivileged user `kiln`, in a user namespace of its subordinate ids) and a root
 * worker with `--userns-remap kiln`, one after the other on one farm (nats-server, a scheduler,
 * the S3 store): each case gives the same output on all three, entry by entry: the local export's
 * tree (types, modes, owners, contents, link targets) and the OCI image (config, and each layer's
 * entries), or the same error. Each worker declares linux/amd64 and, through qemu,
 * linux/arm64=emulated, so every case of the corpus runs on it. No mocks: crun, overlayfs in the
 * user namespace, real registries and stores.
 */
import { mkdir, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corpusCases, prepareCase, readImage, treeEntries } from './corpus.js';
import type { ComparableImage } from './corpus.js';
import { runKiln } from './run-kiln.js';
import { startUsernsFarm } from './userns-farm.js';
import type { UsernsFarm } from './userns-farm.js';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';
const PLATFORMS = ['--platform', 'linux/amd64', '--platform', 'linux/arm64=emulated'];

/** What one case gave on one worker. */
interface CaseOutput {
  /** The case's expected error, when it failed as its expect.json says. */
  error?: string;
  tree?: string[];
  image?: ComparableImage;
}

let farm: UsernsFarm;
let sshServer: Server;
let sshSock: string;
let cases: string[];
/** Each case's output on the root worker: the reference. */
const reference = new Map<string, CaseOutput>();

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  cases = await corpusCases();
  farm = await startUsernsFarm('rootless-corpus');
  // A stand-in ssh agent: a unix socket that answers; RUN --mount=type=ssh must see a socket.
  sshSock = join(farm.dir, 'agent.sock');
  sshServer = createServer((c) => c.end());
  await new Promise<void>((r) => sshServer.listen(sshSock, r));
});

afterAll(async () => {
  await new Promise<void>((r) => (sshServer ? sshServer.close(() => r()) : r()));
  await farm?.stop();
});

/** Builds case `name` on the farm (no cache) into `dir`, and reads what it gave. */
async function buildCase(name: string, dir: string): Promise<CaseOutput> {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const { exp, args } = await prepareCase(name, dir, { base: fixture, sshSock });
  const rootfs = join(dir, 'rootfs');
  const image = join(dir, 'image.tar');
  const res = await runKiln([
    ...args,
    ...['--addr', farm.scheduler.addr, '--no-cache'],
    ...['-o', `type=local,dest=${rootfs}`, '-o', `type=oci,dest=${image}`],
  ]);
  if (exp.error) {
    expect(res.code, res.out).toBe(1);
    expect(res.out).toContain(exp.error.match);
    return { error: exp.error.match };
  }
  expect(res.code, `${name}:\n${res.out}`).toBe(0);
  return { tree: await treeEntries(rootfs), image: await readImage(image) };
}

/** Builds every case on a worker started with `o`, the only worker of the farm meanwhile. */
async function buildCorpus(
  id: string,
  o: { user?: string; args?: string[] },
): Promise<Map<string, CaseOutput>> {
  const worker = await farm.startWorker(id, { ...o, args: [...PLATFORMS, ...(o.args ?? [])] });
  const out = new Map<string, CaseOutput>();
  try {
    for (const name of cases) out.set(name, await buildCase(name, join(farm.dir, 'out', id, name)));
    // The builds ran there.
    expect(worker.claims()).toBeGreaterThan(cases.length);
  } finally {
    await worker.proc.stop(10_000);
  }
  return out;
}

/** The differences from the reference, one line per case and entry. */
function differences(got: Map<string, CaseOutput>): string[] {
  const diffs: string[] = [];
  for (const name of cases) {
    const want = reference.get(name)!;
    const have = got.get(name)!;
    if (want.error !== have.error) diffs.push(`${name}: error ${have.error} != ${want.error}`);
    const onlyIn = (a: string[] = [], b: string[] = []): string[] =>
      a.filter((e) => !b.includes(e));
    for (const e of onlyIn(have.tree, want.tree)) diffs.push(`${name}: tree has ${e}`);
    for (const e of onlyIn(want.tree, have.tree)) diffs.push(`${name}: tree lacks ${e}`);
    if (JSON.stringify(have.image?.config) !== JSON.stringify(want.image?.config))
      diffs.push(`${name}: config ${JSON.stringify(have.image?.config)}`);
    const layers = Math.max(have.image?.layers.length ?? 0, want.image?.layers.length ?? 0);
    for (let i = 0; i < layers; i++) {
      const h = have.image?.layers[i];
      const w = want.image?.layers[i];
      for (const e of onlyIn(h, w)) diffs.push(`${name}: layer ${i} has ${e}`);
      for (const e of onlyIn(w, h)) diffs.push(`${name}: layer ${i} lacks ${e}`);
    }
  }
  return diffs;
}

describe('the Dockerfile corpus in a user namespace', () => {
  it('a root worker builds every case (the reference)', async () => {
    for (const [k, v] of await buildCorpus('rootful', {})) reference.set(k, v);
    // Owners other than root reach the outputs (the comparison would see them shifted).
    const user = reference.get('user')!;
    expect(user.tree).toContainEqual(
      expect.stringMatching(/^f home\/svc\/owned\.txt 100644 2000:2001 /),
    );
  }, 1_800_000);

  it('a rootless worker gives the same outputs, entry by entry', async () => {
    expect(reference.size).toBe(cases.length);
    expect(differences(await buildCorpus('rootless', { user: 'kiln' }))).toEqual([]);
  }, 1_800_000);

  it('a root worker with --userns-remap kiln gives the same outputs, entry by entry', async () => {
    expect(reference.size).toBe(cases.length);
    const got = await buildCorpus('remapped', { args: ['--userns-remap', 'kiln'] });
    expect(differences(got)).toEqual([]);
  }, 1_800_000);
});
