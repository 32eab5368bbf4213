import type { DockerfileError } from './dockerfile-error.js';

/** A range of 1-based lines, inclusive. An end below the start means the start line only. */
export interface LineRange {
  start: number;
  end: number;
}

function containsLine(ranges: readonly LineRange[], l: number): boolean {
  return ranges.some((r) => r.start <= l && Math.max(r.end, r.start) >= l);
}

/**
 * The source excerpt BuildKit prints under a failed build (`errdefs.Source.Print`): a header
 * `Dockerfile:N`, the offending lines marked `>>>` with a few lines of context, framed by dashes.
 * Returns an empty string when the range lies outside the source.
 */
export function printSourceRange(
  source: string,
  ranges: readonly LineRange[],
  filename = 'Dockerfile',
): string {
  if (ranges.length === 0) return '';
  const lines = source.split('\n');
  let start = Math.min(...ranges.map((r) => r.start));
  let end = Math.max(...ranges.map((r) => Math.max(r.end, r.start)));
  if (start > lines.length || start < 1) return '';
  if (end > lines.length) end = lines.length;

  const pad = end === start ? 4 : 2;
  const prepadStart = start;
  for (let p = 0; p < pad;) {
    if (start > 1) {
      start--;
      p++;
    }
    if (end !== lines.length) {
      end++;
      p++;
    }
    p++;
  }

  let out = `${filename}:${prepadStart}\n--------------------\n`;
  for (let i = start; i <= end; i++) {
    const pfx = containsLine(ranges, i) ? '>>>' : '   ';
    out += ` ${String(i).padStart(3, ' ')} | ${pfx} ${lines[i - 1] ?? ''}\n`;
  }
  return out + '--------------------\n';
}

/**
 * Formats a Dockerfile error the way `docker build` shows it: the excerpt with the offending lines
 * marked, then the message.
 */
export function formatDockerfileError(
  err: DockerfileError,
  source: string,
  filename = 'Dockerfile',
): string {
  const excerpt = printSourceRange(source, [{ start: err.startLine, end: err.endLine }], filename);
  return `${excerpt}ERROR: ${err.message}`;
}
