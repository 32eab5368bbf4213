/**
 * Write-behind: while the worker has no task running, the results it made whose layers have no
 * blob yet are made blobs in the store (oldest first), and the task records that name them gain
 * the blobs' digests (`blobsUploadedRule` in `@kiln/bus`, written by the scheduler on the worker's
 * request, blobs first). From then on the result
 * no longer depends on this worker: its death costs no rerun.
 *
 * - It never competes with a task: a pass starts only after the worker has been idle for
 *   `idleMs`, and stops before the next layer once a task arrives (a layer being compressed
 *   finishes); the next idle period resumes where it stopped (made layers are remembered).
 * - {@link WriteBehind.flush} (drain) uploads everything left, tasks or not, within a deadline.
 * - What is pending lives in memory: after a restart, earlier results are still held and made on
 *   request, but their records gain no digests.
 */
import { taskKey } from '@kiln/bus';
import type { MaterializedLayer, RecordClient } from '@kiln/bus';
import { MaterializeResultUnknownError } from '@kiln/bus';

export interface WriteBehindOptions {
  /** Asks the scheduler to add the digests to the records (`blobsUploadedRule`). */
  records: Pick<RecordClient, 'request'>;
  /** Makes a held result's layers blobs; undefined when it yielded (TaskRunner). */
  materialize(
    resultId: string,
    o: { yieldTo?: () => boolean },
  ): Promise<MaterializedLayer[] | undefined>;
  /** How long the worker must be idle before a pass starts. */
  idleMs: number;
  /** A result could not be uploaded or its records not updated (logged; it is dropped). */
  onError?: (err: unknown, resultId: string) => void;
  /** A result was uploaded and its records updated (tests, logs). */
  onUploaded?: (resultId: string, records: number) => void;
}

export class WriteBehind {
  readonly #o: WriteBehindOptions;
  /** Result id -> cache keys of the records naming it, oldest result first. */
  readonly #pending = new Map<string, Set<string>>();
  #active = 0;
  #timer: NodeJS.Timeout | undefined;
  #pass: Promise<void> | undefined;
  #stopped = false;
  readonly stats = { uploaded: 0, yielded: 0, failed: 0 };

  constructor(o: WriteBehindOptions) {
    this.#o = o;
  }

  /** Results waiting for their blobs, oldest first. */
  pending(): string[] {
    return [...this.#pending.keys()];
  }

  /** A task starts: any pass yields before its next layer. */
  taskStarted(): void {
    this.#active++;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /**
   * A task ended; its outputs that lack blobs (`layers` without a digest) are remembered under
   * the task's cache key. Schedules a pass once the worker stays idle.
   */
  taskEnded(
    cacheKey: string,
    outputs: readonly { resultId?: string | null; layers?: { digest?: string | null }[] | null }[],
  ): void {
    this.#active = Math.max(0, this.#active - 1);
    for (const o of outputs) {
      const id = o.resultId ?? '';
      if (!id || !cacheKey || (o.layers ?? []).every((l) => !!l.digest)) continue;
      let keys = this.#pending.get(id);
      if (!keys) this.#pending.set(id, (keys = new Set()));
      keys.add(cacheKey);
    }
    this.#schedule();
  }

  /** Uploads everything pending (drain), until done or `timeoutMs` passed. */
  async flush(timeoutMs: number): Promise<void> {
    clearTimeout(this.#timer);
    await this.#pass;
    const deadline = Date.now() + timeoutMs;
    await this.#run(() => Date.now() > deadline);
  }

  /** Stops scheduling passes; resolves once the current one ended. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#pass;
  }

  #schedule(): void {
    if (this.#stopped || this.#active > 0 || this.#pending.size === 0 || this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#active > 0 || this.#pass) return;
      this.#pass = this.#run(() => this.#active > 0 || this.#stopped).finally(() => {
        this.#pass = undefined;
        this.#schedule();
      });
    }, this.#o.idleMs);
    this.#timer.unref();
  }

  /** Uploads pending results, oldest first, until none is left or `stop()` is true. */
  async #run(stop: () => boolean): Promise<void> {
    for (const [resultId, keys] of this.#pending) {
      if (stop()) {
        this.stats.yielded++;
        return;
      }
      try {
        const layers = await this.#o.materialize(resultId, { yieldTo: stop });
        if (!layers) {
          this.stats.yielded++;
          return;
        }
        let records = 0;
        for (const cacheKey of keys) {
          const applied = await this.#o.records.request({
            op: 'blobs',
            key: taskKey(cacheKey),
            layers,
          });
          if (applied) records++;
        }
        this.stats.uploaded++;
        this.#o.onUploaded?.(resultId, records);
      } catch (err) {
        this.stats.failed++;
        // Pruned meanwhile: nothing to upload, and nothing worth a log line.
        if (!(err instanceof MaterializeResultUnknownError)) this.#o.onError?.(err, resultId);
      }
      this.#pending.delete(resultId);
    }
  }
}
