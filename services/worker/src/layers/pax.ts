/**
 * Extended attributes in tar layers: PAX records `SCHILY.xattr.<name>=<raw bytes>`, as Go's
 * archive/tar (and so containerd and BuildKit) writes and reads them. tar-stream writes and
 * parses PAX values as UTF-8 text, which corrupts binary values (`security.capability`), so the
 * records are encoded and parsed here byte for byte.
 */
import type { Xattrs } from '../fs/xattr.js';
import { XATTR_SIZE_MAX, validXattrName } from '../fs/xattr.js';
import type * as tar from 'tar-stream';
import { LayerError, LayerErrorCode } from './errors.js';

export const PAX_XATTR_PREFIX = 'SCHILY.xattr.';

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

/**
 * The `SCHILY.xattr.*` records of a PAX extended header, values as raw bytes. Malformed records,
 * invalid names (empty, NUL, longer than 255 bytes) and values over 64 KiB fail with
 * {@link LayerErrorCode.Invalid}.
 */
export function parsePaxXattrs(buf: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let off = 0;
  while (off < buf.length) {
    if (buf[off] === 0) break; // NUL padding after the last record
    const sp = buf.indexOf(0x20, off);
    const lenText = sp < 0 ? '' : buf.toString('latin1', off, sp);
    const len = /^[0-9]{1,9}$/.test(lenText) ? parseInt(lenText, 10) : NaN;
    const end = off + len;
    if (!(len > 0) || end > buf.length || buf[end - 1] !== 0x0a) {
      throw new LayerError(LayerErrorCode.Invalid, 'malformed PAX record');
    }
    const eq = buf.indexOf(0x3d, sp + 1);
    if (eq < 0 || eq >= end - 1)
      throw new LayerError(LayerErrorCode.Invalid, 'malformed PAX record');
    const key = buf.toString('utf8', sp + 1, eq);
    if (key.startsWith(PAX_XATTR_PREFIX)) {
      const name = key.slice(PAX_XATTR_PREFIX.length);
      if (!validXattrName(name)) {
        throw new LayerError(LayerErrorCode.Invalid, 'invalid extended attribute name', {
          details: { name },
        });
      }
      if (end - 1 - (eq + 1) > XATTR_SIZE_MAX) {
        throw new LayerError(LayerErrorCode.Invalid, 'extended attribute value too large', {
          details: { name },
        });
      }
      out.set(name, Buffer.from(buf.subarray(eq + 1, end - 1)));
    }
    off = end;
  }
  return out;
}

const XATTRS = Symbol('kiln.layers.xattrs');

interface ExtractInternals {
  _decodeLongHeader?: (buf: Buffer) => void;
  _header: { type?: string } | null;
  _pax: Record<string | symbol, unknown> | null;
}

/**
 * Makes `extract` keep the raw `SCHILY.xattr.*` values of each entry's PAX header (tar-stream
 * decodes them as UTF-8 only); read them with {@link entryXattrs}. Hooks tar-stream's
 * `_decodeLongHeader`, and fails loudly if a tar-stream version no longer has it.
 */
export function keepPaxXattrs(extract: tar.Extract): void {
  const ex = extract as unknown as ExtractInternals;
  const decode = ex._decodeLongHeader;
  if (typeof decode !== 'function') {
    throw new LayerError(
      LayerErrorCode.Io,
      'tar-stream has no _decodeLongHeader: cannot read xattrs',
    );
  }
  ex._decodeLongHeader = function (this: ExtractInternals, buf: Buffer): void {
    decode.call(this, buf);
    if (this._header?.type === 'pax-header' && this._pax !== null) {
      const xattrs = parsePaxXattrs(buf);
      if (xattrs.size > 0) this._pax[XATTRS] = xattrs;
    }
  };
}

/** The extended attributes of an entry read through an extract given to {@link keepPaxXattrs}. */
export function entryXattrs(header: tar.Header): Map<string, Buffer> | undefined {
  const pax = header.pax as Record<string | symbol, unknown> | undefined;
  return pax?.[XATTRS] as Map<string, Buffer> | undefined;
}
