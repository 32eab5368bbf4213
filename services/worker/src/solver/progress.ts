import type { ProgressEvent } from '@kiln/client';

export type { ProgressEvent };

export type ProgressListener = (e: ProgressEvent) => void;

/**
 * Fans events out to listeners and also offers them as an async iterable (buffered until read).
 * `close()` ends the iteration.
 */
export class ProgressStream implements AsyncIterable<ProgressEvent> {
  private readonly listeners = new Set<ProgressListener>();
  private readonly buffer: ProgressEvent[] = [];
  private waiting: ((r: IteratorResult<ProgressEvent>) => void) | undefined;
  private closed = false;
  private iterated = false;

  on(l: ProgressListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  emit(e: ProgressEvent): void {
    if (this.closed) return;
    for (const l of this.listeners) l(e);
    if (!this.iterated) return;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w({ value: e, done: false });
    } else this.buffer.push(e);
  }

  close(): void {
    this.closed = true;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<ProgressEvent> {
    this.iterated = true;
    return {
      next: () => {
        const e = this.buffer.shift();
        if (e) return Promise.resolve({ value: e, done: false });
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          this.waiting = resolve;
        });
      },
    };
  }
}
