import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir } from '@kiln/testing';
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_DB_BYTES, packagePurl, scanPackages, spdxDocument } from './sbom.js';

let tmp: { dir: string; remove: () => void } | undefined;
afterEach(() => tmp?.remove());

async function rootfs(files: Record<string, string>): Promise<string> {
  tmp = makeTempDir('sbom');
  const root = join(tmp.dir, 'root');
  for (const [p, data] of Object.entries(files)) {
    await mkdir(join(root, p, '..'), { recursive: true });
    await writeFile(join(root, p), data);
  }
  await mkdir(root, { recursive: true });
  return root;
}

describe('the built-in SBOM scanner', () => {
  it('lists installed dpkg packages (status and status.d) and apk packages, sorted', async () => {
    const root = await rootfs({
      'var/lib/dpkg/status':
        'Package: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13\nArchitecture: amd64\nSource: zlib\nDescription: x\n more text\n\n' +
        'Package: removed\nStatus: deinstall ok config-files\nVersion: 1\n',
      'var/lib/dpkg/status.d/base': 'Package: base-files\nVersion: 12.4\nArchitecture: amd64\n',
      'var/lib/dpkg/status.d/base.md5sums': 'not a stanza',
      'lib/apk/db/installed':
        'P:musl\nV:1.2.4-r2\nA:x86_64\nL:MIT\no:musl\n\nP:busybox\nV:1.36\nA:x86_64\n',
    });
    const pkgs = await scanPackages(root);
    expect(pkgs.map((p) => `${p.type}:${p.name}@${p.version}`)).toEqual([
      'apk:busybox@1.36',
      'apk:musl@1.2.4-r2',
      'deb:base-files@12.4',
      'deb:zlib1g@1:1.2.13',
    ]);
    expect(packagePurl(pkgs[3]!, 'debian-12')).toBe(
      'pkg:deb/debian/zlib1g@1%3A1.2.13?arch=amd64&upstream=zlib&distro=debian-12',
    );
  });

  it('follows symlinks inside the rootfs only', async () => {
    // An absolute link resolves against the rootfs, never the host's /etc.
    const root = await rootfs({ 'etc/passwd': 'Package: inside\nVersion: 1\n' });
    await mkdir(join(root, 'var/lib/dpkg'), { recursive: true });
    await symlink('/etc/passwd', join(root, 'var/lib/dpkg/status'));
    await symlink('../../../../../../../../etc', join(root, 'lib'));
    expect((await scanPackages(root)).map((p) => p.name)).toEqual(['inside']);
  });

  it('refuses a database over the bound instead of listing part of it', async () => {
    const root = await rootfs({});
    await mkdir(join(root, 'var/lib/dpkg'), { recursive: true });
    await writeFile(join(root, 'var/lib/dpkg/status'), Buffer.alloc(MAX_DB_BYTES + 1, 0x41));
    await expect(scanPackages(root)).rejects.toMatchObject({ code: 'EXPORT_SBOM_INVALID' });
  });

  it('bounds every database together, not each file', async () => {
    const root = await rootfs({});
    await mkdir(join(root, 'var/lib/dpkg/status.d'), { recursive: true });
    const half = Buffer.alloc(MAX_DB_BYTES / 2 + 1, 0x41);
    await writeFile(join(root, 'var/lib/dpkg/status.d/a'), half);
    await writeFile(join(root, 'var/lib/dpkg/status.d/b'), half);
    await expect(scanPackages(root)).rejects.toMatchObject({ code: 'EXPORT_SBOM_INVALID' });
  });

  it('gives the same document for the same filesystem', async () => {
    const root = await rootfs({ 'lib/apk/db/installed': 'P:musl\nV:1\nA:x86_64\n' });
    const a = await spdxDocument(root, 'app:1', '2023-11-14T22:13:20Z');
    expect(await spdxDocument(root, 'app:1', '2023-11-14T22:13:20Z')).toEqual(a);
    const doc = JSON.parse(a.toString()) as { spdxVersion: string; packages: unknown[] };
    expect(doc.spdxVersion).toBe('SPDX-2.3');
    expect(doc.packages).toHaveLength(1);
  });
});
