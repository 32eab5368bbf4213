/**
 * The store collector's Prometheus metrics (prom-client, one registry per process), served on
 * `--metrics-listen` as `/metrics`: runs by outcome, what the runs deleted, and what the last
 * successful run saw in the store. Names follow the farm's conventions (`kiln_` prefix, `_total`
 * counters, base units). A dry run counts as a run; it deletes nothing, so it adds nothing to the
 * deleted counters.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { StoreGcReport } from './store-gc.js';

export class CacheStoreMetrics {
  readonly registry = new Registry();
  readonly #runs: Counter<'outcome'>;
  readonly #deletedBlobs: Counter;
  readonly #deletedBytes: Counter;
  readonly #last: Record<'blobs' | 'bytes' | 'live' | 'recent' | 'missing', Gauge>;
  readonly #lastSuccess: Gauge;
  readonly #duration: Gauge;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'kiln_cache_store_' });
    this.#runs = new Counter({
      name: 'kiln_store_gc_runs_total',
      help: 'Store collections, by outcome (success, failure).',
      labelNames: ['outcome'],
      registers,
    });
    for (const outcome of ['success', 'failure']) this.#runs.inc({ outcome }, 0);
    this.#deletedBlobs = new Counter({
      name: 'kiln_store_gc_deleted_blobs_total',
      help: 'Blobs deleted from the content store (not counting dry runs).',
      registers,
    });
    this.#deletedBytes = new Counter({
      name: 'kiln_store_gc_deleted_bytes_total',
      help: 'Bytes of the blobs deleted from the content store (not counting dry runs).',
      registers,
    });
    const gauge = (name: string, help: string): Gauge => new Gauge({ name, help, registers });
    this.#last = {
      blobs: gauge('kiln_store_blobs', 'Blobs in the content store at the last collection.'),
      bytes: gauge('kiln_store_bytes', 'Bytes in the content store at the last collection.'),
      live: gauge(
        'kiln_store_live_blobs',
        'Blobs a live cache record named at the last collection.',
      ),
      recent: gauge(
        'kiln_store_recent_blobs',
        'Unreferenced blobs kept at the last collection because they were used recently.',
      ),
      missing: gauge(
        'kiln_store_missing_digests',
        'Digests live records name that the store does not hold (cache keys and diffIDs too).',
      ),
    };
    this.#lastSuccess = gauge(
      'kiln_store_gc_last_success_timestamp_seconds',
      'When the last successful collection ended (Unix time).',
    );
    this.#duration = gauge(
      'kiln_store_gc_last_duration_seconds',
      'How long the last successful collection took.',
    );
  }

  /** A run that ended with `r`, after `seconds`. */
  collected(r: StoreGcReport, seconds: number, dryRun: boolean): void {
    this.#runs.inc({ outcome: 'success' });
    if (!dryRun) {
      this.#deletedBlobs.inc(r.deleted);
      this.#deletedBytes.inc(r.deletedBytes);
    }
    for (const k of ['blobs', 'bytes', 'live', 'recent', 'missing'] as const)
      this.#last[k].set(r[k]);
    this.#lastSuccess.set(Date.now() / 1000);
    this.#duration.set(seconds);
  }

  failed(): void {
    this.#runs.inc({ outcome: 'failure' });
  }

  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
