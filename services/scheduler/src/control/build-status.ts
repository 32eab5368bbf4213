/**
 * The progress of one build as a sequence of `StatusResponse` frames numbered 1, 2, 3... kept in
 * a ring buffer, so that a client that lost its stream resumes with `since_seq` = the last seq it
 * saw and gets every later frame exactly once, in order. Frames older than the ring's capacity
 * are gone: a reader that asks for them starts at the oldest kept frame (its first seq tells it
 * how many it missed).
 */
import { control } from '@kiln/protocol';

type StatusResponse = InstanceType<typeof control.StatusResponse>;
export type StatusFrame = Omit<Parameters<typeof control.StatusResponse.create>[0] & object, 'seq'>;

export class BuildStatus {
  readonly #capacity: number;
  readonly #ring: StatusResponse[] = [];
  #seq = 0;
  #closed = false;
  #wake: (() => void)[] = [];

  constructor(capacity = 10_000) {
    this.#capacity = capacity;
  }

  /** The seq of the last frame pushed (0 when none). */
  get seq(): number {
    return this.#seq;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Appends a frame; ignored once closed. */
  push(frame: StatusFrame): void {
    if (this.#closed) return;
    this.#seq += 1;
    this.#ring.push(control.StatusResponse.create({ ...frame, seq: this.#seq }));
    if (this.#ring.length > this.#capacity) this.#ring.shift();
    this.#notify();
  }

  /** No more frames: readers end after the last one. */
  close(): void {
    this.#closed = true;
    this.#notify();
  }

  /**
   * Frames with seq > `sinceSeq`, then every new frame as it is pushed; ends after the last frame
   * of a closed build, or when `signal` aborts.
   */
  async *since(sinceSeq: number, signal?: AbortSignal): AsyncGenerator<StatusResponse> {
    let cursor = sinceSeq;
    for (;;) {
      if (signal?.aborted) return;
      const oldest = this.#ring[0] ? Number(this.#ring[0].seq) : this.#seq + 1;
      const start = Math.max(0, cursor + 1 - oldest);
      const batch = this.#ring.slice(start);
      for (const f of batch) {
        yield f;
        cursor = Number(f.seq);
      }
      if (batch.length > 0) continue;
      if (this.#closed) return;
      await new Promise<void>((resolve) => {
        const done = (): void => {
          signal?.removeEventListener('abort', done);
          resolve();
        };
        this.#wake.push(done);
        signal?.addEventListener('abort', done, { once: true });
      });
    }
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = [];
    for (const f of w) f();
  }
}
