import { appendFileSync } from 'node:fs';
import { open, readFile, rename, unlink } from 'node:fs/promises';
import type { SnapshotKind } from './types.js';
import { SnapshotError, SnapshotErrorCode } from './errors.js';

/** One snapshot as persisted. `id` names its directory under `snapshots/`. */
export interface SnapshotRecord {
  id: number;
  kind: SnapshotKind;
  parent?: string;
  created: string;
  labels: Record<string, string>;
}

export interface MetadataFile {
  version: 1;
  backend: string;
  nextId: number;
  snapshots: Record<string, SnapshotRecord>;
}

/** The log's first line. */
interface LogHeader {
  version: 2;
  backend: string;
  nextId: number;
}

/** One change: the record of `k` (null: removed). */
export type LogLine = [string, SnapshotRecord | null];

/**
 * The snapshotter's records as an append-only log (`metadata.jsonl`): a header line (version,
 * backend, the next id as of the last compaction), then one JSON line per change, the last line
 * of a key winning. A change costs one `write(2)` of its lines (a commit's two lines go in one,
 * so a process killed at any point leaves either both or neither); the whole file is rewritten
 * (temp file, fsync, rename) only when superseded lines outnumber live ones. It replaced one
 * JSON file rewritten and fsynced at every prepare, commit and remove (~100 KB on a worker with
 * a few hundred snapshots, on the critical path of every task).
 *
 * Durability: what a resolved {@link append} wrote survives the process being killed (it is in
 * the page cache); a power loss may lose the last changes, which load then treats as a crash
 * before them (their directories are removed): a torn or bad line ends the log.
 */
export class MetadataLog {
  private lines = 0;
  /** The file may not hold what memory does (an append failed, a torn tail): rewrite it next. */
  private needsRewrite = false;

  private constructor(
    private readonly path: string,
    private readonly backend: string,
  ) {}

  /**
   * Opens the log at `path` (`<root>/metadata.jsonl`), migrating `legacyPath` (the JSON file of
   * earlier versions) when only it exists. Returns the records and the next id to use.
   */
  static async open(
    path: string,
    legacyPath: string,
    backend: string,
  ): Promise<{ log: MetadataLog; meta: MetadataFile }> {
    const log = new MetadataLog(path, backend);
    let meta = await log.read();
    if (meta === undefined) {
      meta = (await readLegacy(legacyPath)) ?? { version: 1, backend, nextId: 1, snapshots: {} };
      if (meta.backend !== backend) return { log, meta }; // the caller refuses it
      await log.rewrite(meta);
    } else if (meta.backend !== backend) {
      return { log, meta };
    } else if (log.needsRewrite || log.lines > 2 * Object.keys(meta.snapshots).length + 256) {
      await log.rewrite(meta);
    }
    await unlink(legacyPath).catch((err: unknown) => {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(legacyPath, err);
    });
    return { log, meta };
  }

  /**
   * Appends `changes` (one write) and, when superseded lines dominate, rewrites the file from
   * `meta` (which must already hold the changes). Calls must not overlap (the snapshotter's
   * group commit runs one at a time).
   */
  async append(changes: readonly LogLine[], meta: MetadataFile): Promise<void> {
    if (changes.length === 0 && !this.needsRewrite) return;
    if (this.needsRewrite || this.lines > 2 * Object.keys(meta.snapshots).length + 1024) {
      await this.rewrite(meta);
      return;
    }
    try {
      // One write(2) (an open file would outlive the snapshotter, which has no close), made
      // synchronously: a few hundred bytes into the page cache cost microseconds, where the
      // thread pool's open, write and close cost three event-loop round trips at each prepare
      // and commit, on the critical path of every task.
      appendFileSync(this.path, changes.map((c) => `${JSON.stringify(c)}\n`).join(''));
      this.lines += changes.length;
    } catch (err) {
      // Part of it may be written: the next change rewrites the file from memory.
      this.needsRewrite = true;
      throw ioError(this.path, err);
    }
  }

  private async read(): Promise<MetadataFile | undefined> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw ioError(this.path, err);
    }
    const rows = text.split('\n');
    // The file ends with a newline; anything after the last one is a line torn by a power loss
    // (dropped; the file is rewritten before the next append would extend it).
    if (rows.pop() !== '') this.needsRewrite = true;
    const header = parse(rows[0] ?? '') as Partial<LogHeader> | undefined;
    if (
      header === undefined ||
      header.version !== 2 ||
      typeof header.backend !== 'string' ||
      typeof header.nextId !== 'number'
    ) {
      throw new SnapshotError(SnapshotErrorCode.Io, `unsupported snapshot metadata ${this.path}`);
    }
    const meta: MetadataFile = {
      version: 1,
      backend: header.backend,
      nextId: header.nextId,
      snapshots: {},
    };
    for (let i = 1; i < rows.length; i++) {
      const line = parse(rows[i]!);
      if (!isLogLine(line)) {
        // Only a power loss leaves a bad line (a kill cannot tear one write): the log ends
        // there, as if the machine had stopped before it, and is rewritten.
        this.needsRewrite = true;
        break;
      }
      const [key, rec] = line;
      if (rec === null) delete meta.snapshots[key];
      else {
        meta.snapshots[key] = rec;
        // Ids are never reused, removed ones included (their directory may still be going).
        meta.nextId = Math.max(meta.nextId, rec.id + 1);
      }
    }
    this.lines = rows.length;
    return meta;
  }

  /** The header and one line per live record, atomically (temp file, fsync, rename). */
  private async rewrite(meta: MetadataFile): Promise<void> {
    const header: LogHeader = { version: 2, backend: this.backend, nextId: meta.nextId };
    const body = [
      JSON.stringify(header),
      ...Object.entries(meta.snapshots).map(([k, r]) => JSON.stringify([k, r])),
    ];
    const tmp = `${this.path}.tmp`;
    try {
      const fh = await open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(`${body.join('\n')}\n`);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, this.path);
      this.lines = body.length;
      this.needsRewrite = false;
    } catch (err) {
      throw ioError(this.path, err);
    }
  }
}

function parse(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch {
    return undefined;
  }
}

function isLogLine(v: unknown): v is LogLine {
  if (!Array.isArray(v) || v.length !== 2 || typeof v[0] !== 'string') return false;
  const r = v[1] as Partial<SnapshotRecord> | null;
  return (
    r === null ||
    (typeof r === 'object' &&
      typeof r.id === 'number' &&
      typeof r.kind === 'string' &&
      typeof r.labels === 'object')
  );
}

function ioError(path: string, cause: unknown): SnapshotError {
  return cause instanceof SnapshotError
    ? cause
    : new SnapshotError(SnapshotErrorCode.Io, `writing ${path}`, { cause });
}

/** The JSON file of earlier versions; undefined when there is none. */
async function readLegacy(path: string): Promise<MetadataFile | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new SnapshotError(SnapshotErrorCode.Io, `reading ${path}`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new SnapshotError(SnapshotErrorCode.Io, `corrupt snapshot metadata ${path}`, {
      cause: err,
    });
  }
  const m = parsed as Partial<MetadataFile>;
  if (
    m.version !== 1 ||
    typeof m.nextId !== 'number' ||
    typeof m.snapshots !== 'object' ||
    m.snapshots === null
  ) {
    throw new SnapshotError(SnapshotErrorCode.Io, `unsupported snapshot metadata ${path}`);
  }
  return m as MetadataFile;
}
