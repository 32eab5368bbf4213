/**
 * Extended attributes read from tar archives (layers and ADD): PAX records
 * `SCHILY.xattr.<name>=<raw bytes>`, as Go's archive/tar writes them. tar-stream decodes PAX values
 * as UTF-8 text, which corrupts binary values (`security.capability`), so the raw extended header
 * is parsed here byte for byte.
 */
import type * as tar from 'tar-stream';
import { XATTR_SIZE_MAX, validXattrName } from './xattr.js';

export const PAX_XATTR_PREFIX = 'SCHILY.xattr.';

/**
 * The `SCHILY.xattr.*` records of a PAX extended header, values as raw bytes. Malformed records,
 * invalid names (empty, NUL, longer than 255 bytes) and values over 64 KiB throw a plain `Error`
 * (no errno code: callers report it as a malformed archive).
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
      throw new Error('malformed PAX record');
    }
    const eq = buf.indexOf(0x3d, sp + 1);
    if (eq < 0 || eq >= end - 1) throw new Error('malformed PAX record');
    const key = buf.toString('utf8', sp + 1, eq);
    if (key.startsWith(PAX_XATTR_PREFIX)) {
      const name = key.slice(PAX_XATTR_PREFIX.length);
      if (!validXattrName(name)) {
        throw new Error(`invalid extended attribute name ${JSON.stringify(name)}`);
      }
      if (end - 1 - (eq + 1) > XATTR_SIZE_MAX) {
        throw new Error(`extended attribute value too large: ${JSON.stringify(name)}`);
      }
      out.set(name, Buffer.from(buf.subarray(eq + 1, end - 1)));
    }
    off = end;
  }
  return out;
}

const XATTRS = Symbol('kiln.tar.xattrs');

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
    throw new Error('tar-stream has no _decodeLongHeader: cannot read extended attributes');
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
