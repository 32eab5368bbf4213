/**
 * Kiln's built-in SBOM scanner (`attest:sbom`): BuildKit runs a scanner image
 * (docker/buildkit-syft-scanner) over the result; Kiln cannot pull it, so it reads the package
 * databases of the final filesystem itself and writes an SPDX 2.3 document (predicate type
 * `https://spdx.dev/Document`). It knows:
 * - dpkg: `/var/lib/dpkg/status` (packages whose Status ends in `installed`) and the per-package
 *   files of `/var/lib/dpkg/status.d/` (distroless images);
 * - apk: `/lib/apk/db/installed`.
 * Files are read through the rootfs's own symlinks but never outside it, at most
 * {@link MAX_DB_BYTES} in all; at most {@link MAX_PACKAGES} packages are listed (more is an error, never a
 * silently short list).
 */
import { createHash } from 'node:crypto';
import { lstat, readdir, readFile } from 'node:fs/promises';
import { resolveInRoot } from '@kiln/layers';
import { KilnError } from '@kiln/protocol';

export const SPDX_PREDICATE_TYPE = 'https://spdx.dev/Document';
export const MAX_DB_BYTES = 64 * 1024 * 1024;
export const MAX_PACKAGES = 100_000;

export interface Package {
  type: 'deb' | 'apk';
  name: string;
  version: string;
  arch: string;
  /** The source package (deb `Source`, apk origin), when it differs. */
  source?: string;
  license?: string;
  supplier?: string;
}

export class SbomError extends KilnError {
  constructor(message: string) {
    super('EXPORT_SBOM_INVALID', message);
  }
}

/**
 * A file of the rootfs, resolved inside it; undefined when it is missing or not a file. `budget`
 * is what the scan may still read: every database together is bounded, not each file.
 */
async function readInRoot(
  root: string,
  path: string,
  budget: { bytes: number },
): Promise<string | undefined> {
  const host = await resolveInRoot(root, path);
  const st = await lstat(host).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return undefined;
    throw e;
  });
  if (!st?.isFile()) return undefined;
  budget.bytes -= st.size;
  if (budget.bytes < 0)
    throw new SbomError(
      `the package databases exceed ${MAX_DB_BYTES} bytes at ${path}: the SBOM scanner reads at most that`,
    );
  return readFile(host, 'utf8');
}

/** RFC 822 style stanzas (dpkg), continuation lines folded into their field. */
function stanzas(text: string): Map<string, string>[] {
  const out: Map<string, string>[] = [];
  for (const block of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    let last = '';
    for (const line of block.split('\n')) {
      if (/^[ \t]/.test(line) && last) {
        fields.set(last, `${fields.get(last)}\n${line.trim()}`);
        continue;
      }
      const i = line.indexOf(':');
      if (i <= 0) continue;
      last = line.slice(0, i).trim();
      fields.set(last, line.slice(i + 1).trim());
    }
    if (fields.size > 0) out.push(fields);
  }
  return out;
}

function dpkgPackages(text: string): Package[] {
  return stanzas(text).flatMap((f): Package[] => {
    const name = f.get('Package');
    const status = f.get('Status');
    // Only what is installed: `deinstall ok config-files` and the like are not in the image.
    if (!name || (status !== undefined && !/\binstalled$/.test(status))) return [];
    const source = f.get('Source')?.split(' ')[0];
    return [
      {
        type: 'deb',
        name,
        version: f.get('Version') ?? '',
        arch: f.get('Architecture') ?? '',
        ...(source && source !== name ? { source } : {}),
        ...(f.get('Maintainer') ? { supplier: f.get('Maintainer')! } : {}),
      },
    ];
  });
}

function apkPackages(text: string): Package[] {
  const out: Package[] = [];
  for (const block of text.split(/\n\s*\n/)) {
    const f = new Map<string, string>();
    for (const line of block.split('\n')) if (line[1] === ':') f.set(line[0]!, line.slice(2));
    const name = f.get('P');
    if (!name) continue;
    const origin = f.get('o');
    out.push({
      type: 'apk',
      name,
      version: f.get('V') ?? '',
      arch: f.get('A') ?? '',
      ...(origin && origin !== name ? { source: origin } : {}),
      ...(f.get('L') ? { license: f.get('L')! } : {}),
      ...(f.get('m') ? { supplier: f.get('m')! } : {}),
    });
  }
  return out;
}

/** The packages the databases of the filesystem at `root` list, sorted. */
export async function scanPackages(root: string): Promise<Package[]> {
  const pkgs: Package[] = [];
  const budget = { bytes: MAX_DB_BYTES };
  const add = (more: Package[]): void => {
    pkgs.push(...more);
    if (pkgs.length > MAX_PACKAGES)
      throw new SbomError(`the image lists over ${MAX_PACKAGES} packages`);
  };
  const status = await readInRoot(root, '/var/lib/dpkg/status', budget);
  if (status !== undefined) add(dpkgPackages(status));
  const dir = await resolveInRoot(root, '/var/lib/dpkg/status.d');
  const entries = await readdir(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return [] as string[];
    throw e;
  });
  for (const e of entries.sort()) {
    if (e.endsWith('.md5sums')) continue;
    const text = await readInRoot(root, `/var/lib/dpkg/status.d/${e}`, budget);
    if (text !== undefined) add(dpkgPackages(text));
  }
  const apk = await readInRoot(root, '/lib/apk/db/installed', budget);
  if (apk !== undefined) add(apkPackages(apk));
  const key = (p: Package): string => `${p.type}\0${p.name}\0${p.version}\0${p.arch}`;
  return pkgs.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}

/** The package URL of a package (purl-spec's deb and apk types). */
export function packagePurl(p: Package, distro: string): string {
  const q = [
    ...(p.arch ? [`arch=${encodeURIComponent(p.arch)}`] : []),
    ...(p.source ? [`upstream=${encodeURIComponent(p.source)}`] : []),
    ...(distro ? [`distro=${encodeURIComponent(distro)}`] : []),
  ];
  return `pkg:${p.type}/${p.type === 'deb' ? 'debian' : 'alpine'}/${encodeURIComponent(p.name)}@${encodeURIComponent(p.version)}${q.length ? `?${q.join('&')}` : ''}`;
}

/** `ID` and `VERSION_ID` of `/etc/os-release` (or `/usr/lib/os-release`), as `id-version`. */
async function distroOf(root: string): Promise<string> {
  const budget = { bytes: 64 * 1024 };
  const text =
    (await readInRoot(root, '/etc/os-release', budget)) ??
    (await readInRoot(root, '/usr/lib/os-release', budget)) ??
    '';
  const v = (k: string): string =>
    (new RegExp(`^${k}=("?)(.*)\\1$`, 'm').exec(text)?.[2] ?? '').slice(0, 64);
  const id = v('ID');
  const version = v('VERSION_ID');
  return id ? `${id}${version ? `-${version}` : ''}` : '';
}

/** A string as an SPDX identifier's characters (letters, digits, `.` and `-`). */
const spdxIdPart = (s: string): string => s.replace(/[^A-Za-z0-9.-]/g, '-');

/**
 * The SPDX 2.3 document of the filesystem at `root`: one package per installed package, each
 * DESCRIBED by the document. `created` is given (the image's creation time) so that the same
 * filesystem gives the same document.
 */
export async function spdxDocument(root: string, name: string, created: string): Promise<Buffer> {
  const pkgs = await scanPackages(root);
  const distro = await distroOf(root);
  const packages = pkgs.map((p) => ({
    name: p.name,
    SPDXID: `SPDXRef-Package-${p.type}-${spdxIdPart(p.name)}-${createHash('sha256')
      .update(packagePurl(p, distro))
      .digest('hex')
      .slice(0, 16)}`,
    versionInfo: p.version,
    ...(p.supplier ? { supplier: `Person: ${p.supplier}` } : { supplier: 'NOASSERTION' }),
    downloadLocation: 'NOASSERTION',
    filesAnalyzed: false,
    licenseConcluded: 'NOASSERTION',
    licenseDeclared: 'NOASSERTION',
    copyrightText: 'NOASSERTION',
    ...(p.license ? { comment: `license: ${p.license}` } : {}),
    externalRefs: [
      {
        referenceCategory: 'PACKAGE-MANAGER',
        referenceType: 'purl',
        referenceLocator: packagePurl(p, distro),
      },
    ],
  }));
  const body = JSON.stringify(packages);
  const doc = {
    spdxVersion: 'SPDX-2.3',
    dataLicense: 'CC0-1.0',
    SPDXID: 'SPDXRef-DOCUMENT',
    name,
    documentNamespace: `https://kiln.invalid/spdx/${spdxIdPart(name)}-${createHash('sha256').update(body).digest('hex')}`,
    creationInfo: { created, creators: ['Tool: kiln-sbom-scanner'] },
    packages,
    relationships: packages.map((p) => ({
      spdxElementId: 'SPDXRef-DOCUMENT',
      relationshipType: 'DESCRIBES',
      relatedSpdxElement: p.SPDXID,
    })),
  };
  return Buffer.from(JSON.stringify(doc));
}
