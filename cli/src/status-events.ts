/**
 * The control API's status frames as the progress printer's events: each vertex's transitions
 * (started, cached, completed, error) once, and its log lines.
 */
import type { ProgressEvent, StatusResponse } from '@kiln/client';

const ms = (v: number | { toNumber(): number } | null | undefined): number =>
  v == null ? 0 : Math.floor((typeof v === 'number' ? v : v.toNumber()) / 1e6);

/** The scheduler's export steps (`export-N[-platform]`, services/scheduler control/exports.ts). */
const isExport = (digest: string): boolean => digest.startsWith('export-');

export class StatusEvents {
  /** Per vertex, the last state reported: started / done. */
  readonly #state = new Map<string, 'started' | 'done'>();

  constructor(private readonly emit: (e: ProgressEvent) => void) {}

  push(f: StatusResponse): void {
    for (const v of f.vertexes) {
      const digest = v.digest ?? '';
      const name = v.name ?? '';
      const started = ms(v.startedUnixNano);
      const completed = ms(v.completedUnixNano);
      const was = this.#state.get(digest);
      if (was === 'done') continue;
      if (v.error) {
        this.#state.set(digest, 'done');
        // A vertex stopped because another failed is not an error of its own.
        if (v.error === 'canceled') continue;
        if (!was) this.emit({ type: 'vertex.started', digest, name, time: started || completed });
        this.emit({
          type: 'vertex.error',
          digest,
          name,
          time: completed || Date.now(),
          error: v.error,
          code: '',
        });
      } else if (completed > 0) {
        this.#state.set(digest, 'done');
        // An export reported cached reused a stored artifact, but it was still written or pushed
        // in this build: shown done, never CACHED, as BuildKit shows its exporters.
        if (v.cached && !isExport(digest))
          this.emit({ type: 'vertex.cached', digest, name, time: completed });
        else {
          if (!was) this.emit({ type: 'vertex.started', digest, name, time: started || completed });
          this.emit({
            type: 'vertex.completed',
            digest,
            name,
            time: completed,
            durationMs: Math.max(0, completed - (started || completed)),
          });
        }
      } else if (started > 0 && !was) {
        this.#state.set(digest, 'started');
        this.emit({ type: 'vertex.started', digest, name, time: started });
      }
    }
    for (const l of f.logs) {
      this.emit({
        type: 'vertex.log',
        digest: l.vertex ?? '',
        stream: Number(l.stream) === 2 ? 2 : 1,
        data: l.msg ?? new Uint8Array(0),
        time: ms(l.timestampUnixNano) || Date.now(),
      });
    }
  }
}
