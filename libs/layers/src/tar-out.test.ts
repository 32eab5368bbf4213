import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import * as tar from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { TAR_CHUNK, TarOut } from './tar-out.js';

async function readAll(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

const mtime = new Date(1_700_000_123_000);
const base = {
  size: 0,
  uid: 0,
  gid: 0,
  uname: '',
  gname: '',
  mtime,
  linkname: '',
  devmajor: 0,
  devminor: 0,
};

/** Entries of every kind a layer has, with names of every length class. */
function entries(): { header: tar.Header; body?: Buffer; streamed?: boolean }[] {
  const long = `${'d'.repeat(90)}/${'e'.repeat(60)}/${'f'.repeat(99)}`;
  return [
    { header: { ...base, name: 'a/', type: 'directory', mode: 0o755 } },
    {
      header: { ...base, name: 'a/file', type: 'file', mode: 0o644, size: 5 },
      body: Buffer.from('hello'),
    },
    {
      header: { ...base, name: 'a/empty', type: 'file', mode: 0o600, size: 0 },
      body: Buffer.alloc(0),
    },
    { header: { ...base, name: 'a/.wh.gone', type: 'file', mode: 0, size: 0, mtime: new Date(0) } },
    { header: { ...base, name: 'a/link', type: 'symlink', mode: 0o777, linkname: '../x' } },
    { header: { ...base, name: 'a/hard', type: 'link', mode: 0o644, linkname: 'a/file', size: 0 } },
    { header: { ...base, name: 'a/fifo', type: 'fifo', mode: 0o600, uid: 1000, gid: 1000 } },
    {
      header: {
        ...base,
        name: 'a/dev',
        type: 'character-device',
        mode: 0o666,
        devmajor: 1,
        devminor: 3,
      },
    },
    {
      header: { ...base, name: `${long}`, type: 'file', mode: 0o755, size: 3 },
      body: Buffer.from('abc'),
    },
    {
      header: { ...base, name: `${'g'.repeat(300)}`, type: 'file', mode: 0o644, size: 1 },
      body: Buffer.from('z'),
    },
    {
      header: { ...base, name: 'a/ünï', type: 'file', mode: 0o644, size: 2 },
      body: Buffer.from('hi'),
    },
    {
      header: {
        ...base,
        name: 'a/longlink',
        type: 'symlink',
        mode: 0o777,
        linkname: 'l'.repeat(150),
      },
    },
    {
      header: {
        ...base,
        name: 'a/big',
        type: 'file',
        mode: 0o640,
        uid: 70000,
        gid: 5,
        size: TAR_CHUNK + 777,
      },
      body: randomBytes(TAR_CHUNK + 777),
      streamed: true,
    },
    {
      header: { ...base, name: 'a/odd', type: 'file', mode: 0o644, size: 513 },
      body: randomBytes(513),
    },
  ];
}

describe('TarOut', () => {
  it("writes the bytes tar-stream's pack writes for the same entries", async () => {
    const list = entries();
    const pack = tar.pack();
    const expected = readAll(pack as unknown as Readable);
    for (const e of list) {
      await new Promise<void>((resolve, reject) =>
        pack.entry({ ...e.header }, e.body ?? Buffer.alloc(0), (err) =>
          err ? reject(err) : resolve(),
        ),
      );
    }
    pack.finalize();

    const out = new TarOut();
    const actual = readAll(out.stream);
    for (const e of list) {
      if (e.streamed) {
        await out.entry(e.header);
        // In uneven pieces, as a file stream gives them.
        for (let at = 0; at < e.body!.length; at += 100_000)
          await out.write(e.body!.subarray(at, at + 100_000));
        await out.endBody();
      } else if (e.header.type === 'file' && e.body !== undefined) {
        await out.entry(e.header, e.body);
      } else {
        await out.entry(e.header);
      }
    }
    await out.end();
    const [want, got] = await Promise.all([expected, actual]);
    expect(got.length).toBe(want.length);
    expect(got.equals(want)).toBe(true);
  });

  it('refuses a streamed body of another size than its header says', async () => {
    const out = new TarOut();
    out.stream.resume();
    await out.entry({ ...base, name: 'f', type: 'file', mode: 0o644, size: 4 });
    expect(() => out.write(Buffer.from('hello'))).toThrow(/size mismatch/);
    const short = new TarOut();
    short.stream.resume();
    await short.entry({ ...base, name: 'f', type: 'file', mode: 0o644, size: 4 });
    await short.write(Buffer.from('hi'));
    expect(() => short.endBody()).toThrow(/size mismatch/);
  });

  it('waits for a slow reader instead of buffering the whole archive', async () => {
    const out = new TarOut();
    const body = Buffer.alloc(64 * 1024, 1);
    let settled = 0;
    // Nobody reads: the writer must stop after about a chunk and the stream's buffer.
    const writing = (async () => {
      for (let i = 0; i < 100; i++) {
        await out.entry(
          { ...base, name: `f${i}`, type: 'file', mode: 0o644, size: body.length },
          body,
        );
        settled++;
      }
    })();
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(settled).toBeLessThan(20);
    out.stream.resume();
    await writing;
    expect(settled).toBe(100);
    await out.end();
  });
});
