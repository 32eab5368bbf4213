import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir } from '@kiln/testing';
import { afterAll, describe, expect, it } from 'vitest';
import { subordinateRange, userNamespacePlan } from './user-namespace.js';
import { currentUserNamespace, parseIdMap } from '../runtime/userns.js';

const tmp = makeTempDir('userns');
afterAll(() => tmp.remove());

describe('subordinateRange', () => {
  it('finds the first range of a user by name or uid, and nothing for others', async () => {
    const f = join(tmp.dir, 'subuid');
    await writeFile(f, 'alice:100000:65536\n1002:200000:65536\nbob:300000:0\n');
    expect(await subordinateRange(f, { name: 'alice', uid: 1001 })).toEqual({
      start: 100000,
      count: 65536,
    });
    expect(await subordinateRange(f, { name: 'carol', uid: 1002 })).toEqual({
      start: 200000,
      count: 65536,
    });
    expect(await subordinateRange(f, { name: 'bob', uid: 1003 })).toBeUndefined();
    expect(await subordinateRange(join(tmp.dir, 'none'), { name: 'a', uid: 1 })).toBeUndefined();
  });
});

describe('userNamespacePlan', () => {
  it('is nothing for root without --userns-remap, or once inside', async () => {
    expect(await userNamespacePlan({ usernsRemap: undefined, env: {}, argv: [], uid: 0 })).toBe(
      undefined,
    );
    const inside = { KILN_WORKER_IN_USERNS: 'rootless' };
    expect(await userNamespacePlan({ usernsRemap: 'x', env: inside, argv: [], uid: 5 })).toBe(
      undefined,
    );
  });

  it('refuses a user that does not exist, typed', async () => {
    await expect(
      userNamespacePlan({ usernsRemap: 'no-such-user-here', env: {}, argv: [], uid: 0 }),
    ).rejects.toMatchObject({ code: 'WORKER_USERNS', message: /no user no-such-user-here/ });
  });
});

describe('user namespaces', () => {
  it('parses id maps; the initial namespace is none', async () => {
    expect(
      parseIdMap('         0       1001          1\n         1     100000      65536\n'),
    ).toEqual([
      { inside: 0, outside: 1001, count: 1 },
      { inside: 1, outside: 100000, count: 65536 },
    ]);
    // The tests run as root in the initial namespace.
    expect(await currentUserNamespace()).toBeUndefined();
  });
});
