// Artifacts handed over by reference (`ExportChunk.blob`, the local farm's): the session copies the
// blob from the store it named (`localStore`) and checks it. Against a real gRPC server whose
// session handler sends one scripted ExportChunk (a scripted scheduler, named so: only the
// client's side is under test here; the scheduler's is in worker-integration.test.ts).
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { control, controlService } from '@kiln/protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KilnClient } from './kiln-client.js';
import { atomicFileWriter } from './outputs.js';

type SessionMessage = InstanceType<typeof control.SessionMessage>;

let server: grpc.Server;
let client: KilnClient;
let dir: string;
/** What the scripted scheduler sends after each hello. */
let script: { blob: string; size: number } = { blob: '', size: 0 };

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Puts `bytes` in the store under `digest` (its own digest unless told otherwise). */
function putBlob(store: string, bytes: Buffer, digest = sha(bytes)): string {
  const blobs = join(store, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  writeFileSync(join(blobs, digest.slice('sha256:'.length)), bytes);
  return digest;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-export-ref-'));
  server = new grpc.Server();
  server.addService(controlService, {
    session: (call: grpc.ServerDuplexStream<SessionMessage, SessionMessage>) => {
      call.on('data', (m: SessionMessage) => {
        if (m.hello)
          call.write(
            control.SessionMessage.create({
              export: { index: 0, blob: script.blob, size: script.size, eof: true },
            }),
          );
      });
      call.on('end', () => call.end());
      call.on('error', () => undefined);
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) =>
      e ? reject(e) : resolve(p),
    ),
  );
  client = await KilnClient.connect(`127.0.0.1:${port}`);
});

afterAll(() => {
  client?.close();
  server?.forceShutdown();
  rmSync(dir, { recursive: true, force: true });
});

/** A session that writes export 0 to `dest`; resolves once it is written, or rejects. */
async function receive(dest: string, localStore?: string): Promise<number> {
  const session = client.session({
    onExport: () => atomicFileWriter(dest),
    ...(localStore ? { localStore } : {}),
  });
  try {
    await session.exportsWritten(1);
    return session.exportsFromStore;
  } finally {
    session.close();
  }
}

describe('artifacts by reference', () => {
  it('copies the blob from the store the session named', async () => {
    const store = join(dir, 'store-ok');
    const bytes = Buffer.from('an oci tarball\n'.repeat(50_000));
    script = { blob: putBlob(store, bytes), size: bytes.length };
    const dest = join(dir, 'out-ok', 'image.tar');
    expect(await receive(dest, store)).toBe(1);
    expect(readFileSync(dest).equals(bytes)).toBe(true);
  });

  it('fails typed, leaving nothing at the destination, for a blob that is not what it says, missing, or with no store named', async () => {
    const store = join(dir, 'store-bad');
    const bytes = Buffer.from('the real artifact\n');
    const claimed = sha(bytes);
    putBlob(store, Buffer.from('something else!!!\n'), claimed);
    const cases: [string, { blob: string; size: number }, string | undefined][] = [
      ['tampered', { blob: claimed, size: bytes.length }, store],
      ['wrong size', { blob: claimed, size: bytes.length + 1 }, store],
      ['missing', { blob: sha(Buffer.from('never stored')), size: 12 }, store],
      ['no store named', { blob: claimed, size: bytes.length }, undefined],
      ['not a digest', { blob: '../../etc/passwd', size: 1 }, store],
    ];
    for (const [name, s, localStore] of cases) {
      script = s;
      const out = join(dir, `out-${name.replace(/ /g, '-')}`);
      await expect(receive(join(out, 'image.tar'), localStore), name).rejects.toMatchObject({
        code: 'EXPORT_BLOB_INVALID',
      });
      // Neither the file nor its temporary copy is left.
      expect(existsSync(out) ? readdirSync(out) : [], name).toEqual([]);
    }
  });
});
