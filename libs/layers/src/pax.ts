/**
 * Extended attributes written into tar layers: PAX records `SCHILY.xattr.<name>=<raw bytes>`, as
 * Go's archive/tar (and so containerd and BuildKit) writes them. tar-stream writes PAX values as
 * UTF-8 text, which corrupts binary values (`security.capability`), so the records are encoded
 * here byte for byte. Reading them back is `../fs/tar-xattrs.ts`.
 */
import { PAX_XATTR_PREFIX } from './tar-xattrs.js';
import type { Xattrs } from './xattr.js';
import { validXattrName } from './xattr.js';
import type * as tar from 'tar-stream';

/** `<len> <key>=<value>\n`, where `<len>` counts the whole record, its own digits included. */
function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let total = body.length + 1;
  while (String(total).length + body.length !== total) total = String(total).length + body.length;
  return Buffer.concat([Buffer.from(String(total)), body]);
}

/** A name Go's tar writer accepts as a PAX key suffix: a valid xattr name without `=`. */
function writableName(name: string): boolean {
  return validXattrName(name) && !name.includes('=');
}

/** tar-stream's own test for a header that fits ustar without a PAX header of its own. */
function fitsUstar(name: string): boolean {
  if (Buffer.byteLength(name) !== name.length) return false;
  let rest = name;
  let prefix = '';
  while (rest.length > 100) {
    const i = rest.indexOf('/');
    if (i === -1) return false;
    prefix += prefix ? `/${rest.slice(0, i)}` : rest.slice(0, i);
    rest = rest.slice(i + 1);
  }
  return prefix.length <= 155;
}

/** Go's toASCII, then the field width: what a ustar field holds when PAX carries the real value. */
function asciiField(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[^\x00-\x7f]/g, '').slice(0, 100);
}

function octal(buf: Buffer, value: number, offset: number, width: number): void {
  buf.write(`${value.toString(8).padStart(width - 1, '0')}\0`, offset, 'latin1');
}

/** A ustar header block of type `x` (a PAX extended header for the next entry). */
function paxHeaderBlock(size: number, like: Partial<tar.Header>): Buffer {
  const b = Buffer.alloc(512);
  b.write('PaxHeader', 0, 'latin1');
  octal(b, (like.mode ?? 0o644) & 0o7777, 100, 8);
  octal(b, like.uid ?? 0, 108, 8);
  octal(b, like.gid ?? 0, 116, 8);
  octal(b, size, 124, 12);
  octal(b, Math.max(0, Math.floor((like.mtime?.getTime() ?? 0) / 1000)), 136, 12);
  b.write('x', 156, 'latin1');
  b.write('ustar\x0000', 257, 'latin1');
  octal(b, 0, 329, 8);
  octal(b, 0, 337, 8);
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of b) sum += byte;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return b;
}

/**
 * The PAX extended header (header block, records, padding) that carries `xattrs` for the entry
 * `header`, or undefined when there is nothing to write. Records are sorted by key (as Go writes
 * them), so the bytes depend only on the entry. A name or link target that does not fit ustar
 * travels in the same header (`path`, `linkpath`) and `header` gets ASCII placeholders, so that
 * tar-stream writes no second PAX header (readers keep only the last one). Names that cannot be
 * PAX keys (containing `=` or NUL) are left out, as they cannot be represented.
 */
export function paxXattrHeader(header: tar.Header, xattrs: Xattrs): Buffer | undefined {
  const records: [string, Buffer][] = [];
  for (const [name, value] of xattrs) {
    if (writableName(name)) records.push([`${PAX_XATTR_PREFIX}${name}`, value]);
  }
  if (records.length === 0) return undefined;
  if (!fitsUstar(header.name)) {
    records.push(['path', Buffer.from(header.name)]);
    header.name = asciiField(header.name);
  }
  if (header.linkname && Buffer.byteLength(header.linkname) > 100) {
    records.push(['linkpath', Buffer.from(header.linkname)]);
    header.linkname = asciiField(header.linkname);
  }
  records.sort((a, b) => Buffer.compare(Buffer.from(a[0]), Buffer.from(b[0])));
  return encodePaxHeader(records, header);
}

/**
 * A PAX extended header (type `x` block, the records in the order given, zero padding) for the
 * entry described by `like` (its mode, owner and mtime are copied, as tar-stream does).
 */
export function encodePaxHeader(
  records: readonly (readonly [string, Buffer])[],
  like: Partial<tar.Header>,
): Buffer {
  const data = Buffer.concat(records.map(([k, v]) => paxRecord(k, v)));
  const pad = (512 - (data.length % 512)) % 512;
  return Buffer.concat([paxHeaderBlock(data.length, like), data, Buffer.alloc(pad)]);
}
