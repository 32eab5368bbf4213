/**
 * The control API's status frames (`KilnClient.status`) as progress events: each vertex's
 * transitions (started, cached, completed, error) once, however many frames repeat it (a status
 * stream resumed on another scheduler starts over), its log output and item statuses.
 */
import { TextDecoder } from 'node:util';
import type { ProgressEvent } from './progress-event.js';
import type { StatusResponse } from './kiln-client.js';

type Int64 = number | { toNumber(): number } | null | undefined;

const num = (v: Int64): number => (v == null ? 0 : typeof v === 'number' ? v : v.toNumber());
const ms = (v: Int64): number => Math.floor(num(v) / 1e6);

/** The scheduler's export steps (`export-N[-platform]`, services/scheduler control/exports.ts). */
const isExport = (digest: string): boolean => digest.startsWith('export-');

export class StatusEvents {
  /** Per vertex, the last state reported: started / done. */
  readonly #state = new Map<string, 'started' | 'done'>();
  /** Per vertex and stream, the decoder that keeps a split UTF-8 character for the next chunk. */
  readonly #decoders = new Map<string, TextDecoder>();

  constructor(private readonly emit: (e: ProgressEvent) => void) {}

  push(f: StatusResponse): void {
    for (const v of f.vertexes) this.#vertex(v);
    for (const s of f.statuses) {
      const completed = ms(s.completedUnixNano);
      const total = num(s.total);
      this.emit({
        type: 'vertex.status',
        digest: s.vertex ?? '',
        id: s.id ?? '',
        name: s.name ?? '',
        current: num(s.current),
        ...(total > 0 ? { total } : {}),
        time: ms(s.timestampUnixNano) || completed || Date.now(),
        completed: completed > 0,
      });
    }
    for (const l of f.logs) {
      const digest = l.vertex ?? '';
      const stream = Number(l.stream) === 2 ? 2 : 1;
      const key = `${digest}\0${stream}`;
      let d = this.#decoders.get(key);
      if (!d) this.#decoders.set(key, (d = new TextDecoder('utf-8')));
      const data = Uint8Array.from(l.msg ?? []);
      this.emit({
        type: 'vertex.log',
        digest,
        stream,
        text: d.decode(data, { stream: true }),
        data,
        time: ms(l.timestampUnixNano) || Date.now(),
      });
    }
  }

  #vertex(v: StatusResponse['vertexes'][number]): void {
    const digest = v.digest ?? '';
    const name = v.name ?? '';
    const started = ms(v.startedUnixNano);
    const completed = ms(v.completedUnixNano);
    const was = this.#state.get(digest);
    if (was === 'done') return;
    if (v.error) {
      this.#state.set(digest, 'done');
      // A vertex stopped because another failed is not an error of its own.
      if (v.error === 'canceled') return;
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
}
