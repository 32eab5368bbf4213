/**
 * The scheduler's Prometheus metrics (prom-client, one registry per process), served on
 * `--metrics-listen` as `/metrics`. Names follow Prometheus conventions: a `kiln_` prefix,
 * `_total` counters, base units, labels of small fixed sets (outcome, result, platform, worker).
 *
 * The control server sees only the small {@link BuildMetrics} interface (no prom-client in its
 * code); gauges that describe state (tasks pending, worker slots) are read at scrape time.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { Dispatcher } from './dispatch/index.js';

/** What the control server reports: called once per build start and end, and per vertex. */
export interface BuildMetrics {
  buildStarted(): void;
  buildFinished(outcome: 'success' | 'failure' | 'canceled'): void;
  /** A vertex finished: run on a worker, answered from a cache, or failed. */
  vertexDone(result: 'run' | 'cached' | 'failed'): void;
  /**
   * A client's local directory synced: its listing sent in `full`, or `unchanged` (the client
   * said it is the listing of the last sync, which answered without it).
   */
  contextSynced(listing: 'full' | 'unchanged'): void;
}

export class SchedulerMetrics implements BuildMetrics {
  readonly registry = new Registry();
  readonly #started: Counter;
  readonly #finished: Counter<'outcome'>;
  readonly #vertices: Counter<'result'>;
  readonly #contexts: Counter<'listing'>;

  constructor(dispatcher: Dispatcher) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'kiln_scheduler_' });
    this.#started = new Counter({
      name: 'kiln_builds_started_total',
      help: 'Builds (Solve calls) started.',
      registers,
    });
    this.#finished = new Counter({
      name: 'kiln_builds_finished_total',
      help: 'Builds finished, by outcome (success, failure, canceled).',
      labelNames: ['outcome'],
      registers,
    });
    this.#vertices = new Counter({
      name: 'kiln_vertices_total',
      help: 'Vertices finished, by result: run on a worker, cached, or failed.',
      labelNames: ['result'],
      registers,
    });
    this.#contexts = new Counter({
      name: 'kiln_context_syncs_total',
      help: "Syncs of clients' local directories, by listing: sent in full, or unchanged (not sent).",
      labelNames: ['listing'],
      registers,
    });
    for (const listing of ['full', 'unchanged']) this.#contexts.inc({ listing }, 0);
    for (const outcome of ['success', 'failure', 'canceled']) this.#finished.inc({ outcome }, 0);
    for (const result of ['run', 'cached', 'failed']) this.#vertices.inc({ result }, 0);
    new Gauge({
      name: 'kiln_tasks_pending',
      help: 'Tasks submitted and not finished (queued or running), by platform.',
      labelNames: ['platform'],
      registers,
      collect() {
        this.reset();
        for (const [platform, n] of dispatcher.pendingByPlatform()) this.set({ platform }, n);
      },
    });
    const slots = (name: string, help: string, value: (w: WorkerSlots) => number): void => {
      new Gauge({
        name,
        help,
        labelNames: ['worker'],
        registers,
        collect() {
          this.reset();
          for (const w of dispatcher.liveWorkers()) this.set({ worker: w.id }, value(w));
        },
      });
    };
    slots(
      'kiln_worker_slots',
      'Task slots of each live worker (its last heartbeat).',
      (w) => w.slots,
    );
    slots(
      'kiln_worker_slots_busy',
      'Task slots running a task on each live worker (its last heartbeat).',
      (w) => w.slots - w.freeSlots,
    );
  }

  buildStarted(): void {
    this.#started.inc();
  }

  buildFinished(outcome: 'success' | 'failure' | 'canceled'): void {
    this.#finished.inc({ outcome });
  }

  vertexDone(result: 'run' | 'cached' | 'failed'): void {
    this.#vertices.inc({ result });
  }

  contextSynced(listing: 'full' | 'unchanged'): void {
    this.#contexts.inc({ listing });
  }

  /** The `/metrics` body (Prometheus text exposition 0.0.4). */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

interface WorkerSlots {
  id: string;
  slots: number;
  freeSlots: number;
}
