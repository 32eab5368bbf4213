/**
 * Progress of a build, as typed events (libraries emit events; they do not log). A consumer can
 * render BuildKit-style progress from them: vertices with names, start/end times, CACHED, errors,
 * and the live output of execs.
 */
export type ProgressEvent =
  | { type: 'vertex.started'; digest: string; name: string; time: number }
  | { type: 'vertex.cached'; digest: string; name: string; time: number }
  | { type: 'vertex.completed'; digest: string; name: string; time: number; durationMs: number }
  | {
      type: 'vertex.error';
      digest: string;
      name: string;
      time: number;
      error: string;
      code: string;
    }
  | { type: 'vertex.log'; digest: string; stream: 1 | 2; data: Uint8Array; time: number }
  | {
      type: 'vertex.status';
      digest: string;
      id: string;
      current: number;
      total?: number;
      time: number;
    };
