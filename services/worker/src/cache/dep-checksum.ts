/**
 * The content checksum of one content-based dep (`DepSpec` of `@kiln/llb`): each selector's
 * {@link checksum} inside the input's tree, with the dep's wildcard, symlink and include/exclude
 * rules, joined by `,`. The worker answers the scheduler's checksum requests with it
 * (`node/checksum-responder.ts`).
 */
import { PatternMatcher } from '../fs/patterns.js';
import { checksum } from './contenthash.js';
import type { ChecksumOptions } from './contenthash.js';

/** The fields of a dep spec the checksum depends on. */
export interface DepChecksumSpec {
  selectors: readonly string[];
  wildcard: boolean;
  followLinks: boolean;
  includePatterns: readonly string[];
  excludePatterns: readonly string[];
}

/** The dep's include/exclude patterns as a filter of paths below a selector; none without. */
export function depFilter(dep: DepChecksumSpec): ((rel: string) => boolean) | undefined {
  const inc = dep.includePatterns.length ? new PatternMatcher(dep.includePatterns) : undefined;
  const exc = dep.excludePatterns.length ? new PatternMatcher(dep.excludePatterns) : undefined;
  return inc || exc
    ? (rel: string): boolean =>
        !exc?.matchesOrParentMatches(rel) && (!inc || inc.matchesOrParentMatches(rel))
    : undefined;
}

/** `knownDigest`: see {@link ChecksumOptions}; for snapshots whose file digests are known. */
export async function depChecksum(
  dir: string,
  dep: DepChecksumSpec,
  knownDigest?: ChecksumOptions['knownDigest'],
): Promise<string> {
  const filter = depFilter(dep);
  const parts = await Promise.all(
    dep.selectors.map((sel) =>
      checksum(dir, sel, {
        wildcard: dep.wildcard,
        followLinks: dep.followLinks,
        ...(filter ? { filter } : {}),
        ...(knownDigest ? { knownDigest } : {}),
      }),
    ),
  );
  return parts.join(',');
}
