/**
 * Progress of a build, as typed events (libraries emit events; they do not log): plain numbers
 * (milliseconds since the epoch) and strings, never protobuf `Long`s. A consumer can render
 * BuildKit-style progress from them (`createPrinter` of `@kiln/client/progress` does): vertices
 * with names, start/end times, CACHED, errors, the live output of execs, and the progress of
 * long operations (pulls, exports).
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
      /** The error's code when the farm sent one; '' otherwise (the message says what failed). */
      code: string;
    }
  | {
      type: 'vertex.log';
      digest: string;
      /** 1 stdout, 2 stderr. */
      stream: 1 | 2;
      /**
       * The output as text (UTF-8, decoded per vertex and stream, so a character split across
       * chunks arrives whole in the later one).
       */
      text: string;
      /** The same output as raw bytes. */
      data: Uint8Array;
      time: number;
    }
  | {
      type: 'vertex.status';
      digest: string;
      /** What progresses, within the vertex (a layer being pulled, say). */
      id: string;
      name: string;
      current: number;
      total?: number;
      time: number;
      /** Whether this item is finished. */
      completed: boolean;
    };
