/** Keeps the last `max` lines of a byte stream (a partial last line counts as one). */
export class LineTail {
  private lines: string[] = [];
  private partial = '';

  constructor(private readonly max: number) {}

  push(chunk: Buffer): void {
    const parts = (this.partial + chunk.toString('utf8')).split('\n');
    this.partial = parts.pop() ?? '';
    if (parts.length > 0) {
      this.lines.push(...parts.slice(-this.max));
      if (this.lines.length > this.max) this.lines = this.lines.slice(-this.max);
    }
  }

  toString(): string {
    const all = this.partial === '' ? this.lines : [...this.lines, this.partial];
    return all.slice(-this.max).join('\n');
  }
}
