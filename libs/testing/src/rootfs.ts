import { chmod, copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** Applets linked in the test rootfs (all of them run through /bin/busybox). */
const APPLETS = [
  'sh',
  'echo',
  'cat',
  'id',
  'ls',
  'touch',
  'rm',
  'mkdir',
  'sleep',
  'wget',
  'ping',
  'ip',
  'ifconfig',
  'hostname',
  'mount',
  'stat',
  'env',
  'true',
  'false',
  'uname',
  'pwd',
  'grep',
  'test',
  'nc',
  'printf',
  'head',
  'tail',
  'wc',
  'sed',
  'chmod',
  'ln',
  'readlink',
  'seq',
  'ulimit',
  'awk',
  'cut',
];

/**
 * A minimal busybox root filesystem for tests: `/bin/busybox` (static; `arm64` uses the foreign
 * binary that runs through qemu binfmt) with applet symlinks, /etc/passwd and /etc/group with root,
 * nobody and kiln (1000:1000, also in group `staff` 50), /tmp 1777, /root, /home/kiln, and the
 * mount points /proc /dev /sys.
 */
export async function makeBusyboxRootfs(
  dir: string,
  arch: 'amd64' | 'arm64' = 'amd64',
): Promise<string> {
  await mkdir(join(dir, 'bin'), { recursive: true });
  await copyFile(
    arch === 'amd64' ? '/bin/busybox' : '/usr/local/bin/busybox-arm64',
    join(dir, 'bin', 'busybox'),
  );
  await chmod(join(dir, 'bin', 'busybox'), 0o755);
  for (const a of APPLETS) await symlink('busybox', join(dir, 'bin', a));
  for (const d of ['etc', 'proc', 'dev', 'sys', 'root', 'home/kiln'])
    await mkdir(join(dir, d), { recursive: true });
  await mkdir(join(dir, 'tmp'));
  await chmod(join(dir, 'tmp'), 0o1777);
  await writeFile(
    join(dir, 'etc', 'passwd'),
    'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nkiln:x:1000:1000:kiln:/home/kiln:/bin/sh\n',
  );
  await writeFile(
    join(dir, 'etc', 'group'),
    'root:x:0:\nstaff:x:50:kiln\nnogroup:x:65534:\nkiln:x:1000:\n',
  );
  return dir;
}
