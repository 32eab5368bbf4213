/**
 * A tar writer for layers: the bytes tar-stream's `pack()` writes (its ustar header encoding, its
 * PAX fallback for long and non-ASCII names, its defaults and padding), so that a layer and its
 * diffID are the same as before, but without a stream per entry. tar-stream's pack opens a
 * writable and settles a callback for every entry (~50 µs each: a 5,000-file layer spent most of
 * its time there, issue 9); here an entry is encoded into a buffer that is pushed downstream in
 * chunks of {@link TAR_CHUNK} bytes, and a writer awaits only when the reader is behind.
 */
import { Readable } from 'node:stream';
import type * as tar from 'tar-stream';

/** A tar-stream header, or the PAX header block it writes before an entry with long names. */
type TarHeader = Omit<tar.Header, 'type'> & { type?: tar.Header['type'] | 'pax-header' };

/** Bytes gathered before they are pushed downstream. */
export const TAR_CHUNK = 256 * 1024;

const END_OF_TAR = Buffer.alloc(1024);
const ZEROS = '0000000000000000000';
const SEVENS = '7777777777777777777';
const USTAR = Buffer.from('ustar\x0000', 'latin1');

const TYPEFLAGS: Record<string, number> = {
  file: 0,
  link: 1,
  symlink: 2,
  'character-device': 3,
  'block-device': 4,
  directory: 5,
  fifo: 6,
  'contiguous-file': 7,
  'pax-header': 72,
};

function encodeOct(val: number, n: number): string {
  const s = val.toString(8);
  if (s.length > n) return `${SEVENS.slice(0, n)} `;
  return `${ZEROS.slice(0, n - s.length)}${s} `;
}

function checksum(block: Buffer): number {
  let sum = 8 * 32;
  for (let i = 0; i < 148; i++) sum += block[i]!;
  for (let j = 156; j < 512; j++) sum += block[j]!;
  return sum;
}

/** tar-stream's `headers.encode`: a ustar block, or undefined when the names need PAX. */
export function encodeHeader(h: TarHeader): Buffer | undefined {
  let name = h.name;
  let prefix = '';
  if (Buffer.byteLength(name) !== name.length) return undefined;
  while (name.length > 100) {
    const i = name.indexOf('/');
    if (i === -1) return undefined;
    prefix += prefix ? `/${name.slice(0, i)}` : name.slice(0, i);
    name = name.slice(i + 1);
  }
  if (name.length > 100 || prefix.length > 155) return undefined;
  if (h.linkname && Buffer.byteLength(h.linkname) > 100) return undefined;
  const buf = Buffer.alloc(512);
  buf.write(name, 0);
  buf.write(encodeOct((h.mode ?? 0) & 0o7777, 6), 100);
  buf.write(encodeOct(h.uid ?? 0, 6), 108);
  buf.write(encodeOct(h.gid ?? 0, 6), 116);
  const size = h.size ?? 0;
  if (size.toString(8).length > 11) {
    buf[124] = 0x80;
    let num = size;
    for (let i = 11; i > 0; i--) {
      buf[124 + i] = num & 0xff;
      num = Math.floor(num / 0x100);
    }
  } else {
    buf.write(encodeOct(size, 11), 124);
  }
  buf.write(encodeOct(((h.mtime?.getTime() ?? 0) / 1000) | 0, 11), 136);
  buf[156] = 0x30 + (TYPEFLAGS[h.type ?? 'file'] ?? 0);
  if (h.linkname) buf.write(h.linkname, 157);
  USTAR.copy(buf, 257);
  if (h.uname) buf.write(h.uname, 265);
  if (h.gname) buf.write(h.gname, 297);
  buf.write(encodeOct(h.devmajor ?? 0, 6), 329);
  buf.write(encodeOct(h.devminor ?? 0, 6), 337);
  if (prefix) buf.write(prefix, 345);
  buf.write(encodeOct(checksum(buf), 6), 148);
  return buf;
}

function paxLength(s: string): string {
  const len = Buffer.byteLength(s);
  let digits = Math.floor(Math.log(len) / Math.log(10)) + 1;
  if (len + digits >= Math.pow(10, digits)) digits++;
  return `${len + digits}${s}`;
}

/**
 * The tar stream of a layer. `entry` and `write` may be called again only once the previous
 * call settled; `end` writes the end-of-archive blocks.
 */
export class TarOut {
  readonly stream: Readable;
  #parts: Buffer[] = [];
  #size = 0;
  #resume: (() => void) | undefined;
  /** The declared size of the streamed entry's body, and what was written of it. */
  #body: { size: number; written: number; name: string } | undefined;

  constructor() {
    this.stream = new Readable({
      read: () => {
        const r = this.#resume;
        this.#resume = undefined;
        r?.();
      },
    });
  }

  /** Raw bytes (a PAX record block for the next entry). */
  push(buf: Buffer): Promise<void> | undefined {
    this.#add(buf);
    return this.#maybeFlush();
  }

  #add(buf: Buffer): void {
    this.#parts.push(buf);
    this.#size += buf.length;
  }

  /**
   * An entry (tar-stream's `pack.entry` defaults: no size for a symlink, mode 0o755/0o644 when
   * 0); with `body`, its whole contents. Without `body`, a `file` entry of a size above 0 takes
   * its contents through {@link TarOut.write}, then {@link TarOut.endBody}.
   */
  entry(header: tar.Header, body?: Buffer): Promise<void> | undefined {
    if (this.#body !== undefined) throw new Error(`tar entry ${this.#body.name} is not finished`);
    const h = { ...header };
    if (!h.size || h.type === 'symlink') h.size = 0;
    if (!h.mode) h.mode = h.type === 'directory' ? 0o755 : 0o644;
    if (body !== undefined) h.size = body.length;
    const block = encodeHeader(h);
    if (block !== undefined) this.#add(block);
    else this.#pax(h);
    const hasBody = h.type === 'file' || h.type === 'contiguous-file';
    if (!hasBody || h.size === 0) return this.#maybeFlush();
    if (body === undefined) {
      this.#body = { size: h.size, written: 0, name: h.name };
      return this.#maybeFlush();
    }
    this.#add(body);
    return this.#pad(h.size);
  }

  /** Part of the streamed entry's body. */
  write(chunk: Buffer): Promise<void> | undefined {
    const b = this.#body;
    if (b === undefined) throw new Error('no tar entry takes a body');
    b.written += chunk.length;
    if (b.written > b.size) throw new Error(`tar entry ${b.name}: size mismatch`);
    return this.push(chunk);
  }

  /** Ends the streamed entry's body; it must have its declared size. */
  endBody(): Promise<void> | undefined {
    const b = this.#body;
    if (b === undefined) throw new Error('no tar entry takes a body');
    if (b.written !== b.size) throw new Error(`tar entry ${b.name}: size mismatch`);
    this.#body = undefined;
    return this.#pad(b.size);
  }

  /** The end-of-archive blocks; the stream ends once they are read. */
  async end(): Promise<void> {
    this.#add(END_OF_TAR);
    await this.#flush();
    this.stream.push(null);
  }

  #pax(h: TarHeader): void {
    let rec = '';
    if (h.name) rec += paxLength(` path=${h.name}\n`);
    if (h.linkname) rec += paxLength(` linkpath=${h.linkname}\n`);
    const pax = Buffer.from(rec);
    const outer: TarHeader = {
      name: 'PaxHeader',
      mode: h.mode,
      uid: h.uid,
      gid: h.gid,
      size: pax.length,
      mtime: h.mtime,
      type: 'pax-header',
      linkname: h.linkname ? 'PaxHeader' : '',
      uname: h.uname,
      gname: h.gname,
      devmajor: h.devmajor,
      devminor: h.devminor,
    };
    this.#add(encodeHeader(outer)!);
    this.#add(pax);
    const rest = pax.length & 511;
    if (rest) this.#add(END_OF_TAR.subarray(0, 512 - rest));
    this.#add(encodeHeader({ ...outer, size: h.size, type: h.type })!);
  }

  #pad(size: number): Promise<void> | undefined {
    const rest = size & 511;
    if (rest) this.#add(END_OF_TAR.subarray(0, 512 - rest));
    return this.#maybeFlush();
  }

  #maybeFlush(): Promise<void> | undefined {
    return this.#size >= TAR_CHUNK ? this.#flush() : undefined;
  }

  /** Pushes what is gathered; resolves once the reader wants more. */
  #flush(): Promise<void> | undefined {
    if (this.#size === 0) return undefined;
    const out = this.#parts.length === 1 ? this.#parts[0]! : Buffer.concat(this.#parts, this.#size);
    this.#parts = [];
    this.#size = 0;
    if (this.stream.push(out)) return undefined;
    return new Promise<void>((resolve) => (this.#resume = resolve));
  }
}
