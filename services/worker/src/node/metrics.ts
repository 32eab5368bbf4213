/**
 * The worker's Prometheus metrics (prom-client, one registry per process), served on
 * `--metrics-listen`: task slots and how many are busy, bytes read from and handed to the
 * content store, and the local cache's garbage collections. Names follow Prometheus
 * conventions (`kiln_worker_` prefix, `_total` counters, `_bytes` base unit).
 */
import { PassThrough, Readable } from 'node:stream';
import type { BlobStore } from '@kiln/store';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

export class WorkerMetrics {
  readonly registry = new Registry();
  readonly storeRead: Counter;
  readonly storeWritten: Counter;
  readonly gcCollections: Counter;
  readonly gcRemovedBytes: Counter;

  /** `slots`: the configured slots; `busy()`: tasks running now (read at scrape time). */
  constructor(slots: number, busy: () => number) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'kiln_worker_' });
    new Gauge({
      name: 'kiln_worker_slots',
      help: 'Task slots (tasks run at once).',
      registers,
    }).set(slots);
    new Gauge({
      name: 'kiln_worker_slots_busy',
      help: 'Task slots running a task now.',
      registers,
      collect() {
        this.set(busy());
      },
    });
    this.storeRead = new Counter({
      name: 'kiln_worker_store_read_bytes_total',
      help: 'Bytes read from the content store (layers, contexts, results fetched).',
      registers,
    });
    this.storeWritten = new Counter({
      name: 'kiln_worker_store_written_bytes_total',
      help: 'Bytes handed to the content store (a blob it already holds may be skipped).',
      registers,
    });
    this.gcCollections = new Counter({
      name: 'kiln_worker_gc_collections_total',
      help: 'Background collections of the local cache that removed something.',
      registers,
    });
    this.gcRemovedBytes = new Counter({
      name: 'kiln_worker_gc_removed_bytes_total',
      help: 'Bytes the local cache collections removed.',
      registers,
    });
  }

  /** `store`, counting the bytes that pass through `get` and `put`. */
  countStore(store: BlobStore): BlobStore {
    const read = this.storeRead;
    const written = this.storeWritten;
    const counted = (source: Readable, c: Counter): Readable => {
      const out = new PassThrough();
      source.on('data', (chunk: Buffer) => c.inc(chunk.length));
      source.on('error', (err) => out.destroy(err));
      out.on('close', () => source.destroy());
      return source.pipe(out);
    };
    const get: BlobStore['get'] = async (digest, opts) =>
      counted(await store.get(digest, opts), read);
    const put: BlobStore['put'] = (expected, source, opts) => {
      if (Buffer.isBuffer(source)) {
        written.inc(source.length);
        return store.put(expected, source, opts);
      }
      const r = source instanceof Readable ? source : Readable.from(source);
      return store.put(expected, counted(r, written), opts);
    };
    // A proxy, not a copy: the backends keep private fields, so every other method stays bound.
    return new Proxy(store, {
      get: (target, prop) => {
        if (prop === 'get') return get;
        if (prop === 'put') return put;
        const v: unknown = Reflect.get(target, prop, target);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }

  /** The `/metrics` body (Prometheus text exposition 0.0.4). */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
