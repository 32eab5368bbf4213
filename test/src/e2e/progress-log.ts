/**
 * Reading a plain progress log (`kiln build --progress plain`, `buildctl build --progress
 * plain`: the same `#N name` / `#N CACHED` lines).
 */

/** The names of the steps the log shows as CACHED. */
export function cachedSteps(out: string): string[] {
  const names = new Map<string, string>();
  const cached: string[] = [];
  for (const line of out.split('\n')) {
    const m = /^#(\d+) (.*)$/.exec(line);
    if (!m) continue;
    if (!names.has(m[1]!)) names.set(m[1]!, m[2]!);
    if (m[2] === 'CACHED') cached.push(names.get(m[1]!)!);
  }
  return cached;
}
