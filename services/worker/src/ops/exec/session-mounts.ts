import { chmod, chown, mkdir, mkdtemp, rm, rmdir, writeFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { join } from 'node:path';
import { MS, mount } from '@kiln/sys';
import { unmount } from '../../snapshot/index.js';

/**
 * A private directory for one run's secret files: a small tmpfs (mode 0700, never on disk) under
 * `parent`, outside every snapshot. `close` unmounts it and removes the mount point.
 */
export class SecretDir {
  private n = 0;

  private constructor(readonly path: string) {}

  static async create(parent: string): Promise<SecretDir> {
    await mkdir(parent, { recursive: true, mode: 0o700 });
    const dir = await mkdtemp(join(parent, 'secrets-'));
    try {
      await mount('tmpfs', dir, 'tmpfs', MS.NOSUID | MS.NODEV | MS.NOEXEC, 'mode=0700,size=16m');
    } catch (err) {
      await rmdir(dir);
      throw err;
    }
    return new SecretDir(dir);
  }

  /** Writes one secret file with its owner and mode; returns its host path. */
  async write(data: Uint8Array, uid: number, gid: number, mode: number): Promise<string> {
    const p = join(this.path, String(this.n++));
    await writeFile(p, data, { mode: 0o600 });
    await chown(p, uid, gid);
    await chmod(p, mode);
    return p;
  }

  async close(): Promise<void> {
    await unmount(this.path);
    await rm(this.path, { recursive: true, force: true });
  }
}

/**
 * A unix socket that forwards every connection to `target` (the session's SSH agent socket), with
 * the owner and mode the container should see, as BuildKit's sshforward does. `close` stops it and
 * drops open connections.
 */
export class SocketForwarder {
  private constructor(
    readonly path: string,
    private readonly server: Server,
    private readonly conns: Set<Socket>,
  ) {}

  static async listen(
    path: string,
    target: string,
    uid: number,
    gid: number,
    mode: number,
  ): Promise<SocketForwarder> {
    const conns = new Set<Socket>();
    const server = createServer((client) => {
      const upstream = createConnection(target);
      conns.add(client);
      conns.add(upstream);
      const drop = (): void => {
        client.destroy();
        upstream.destroy();
        conns.delete(client);
        conns.delete(upstream);
      };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    await chown(path, uid, gid);
    await chmod(path, mode);
    return new SocketForwarder(path, server, conns);
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await rm(this.path, { force: true });
  }
}
