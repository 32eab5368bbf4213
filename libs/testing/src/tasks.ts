/** Tasks for the task-bus suites (worker consumer, scheduler dispatcher). */
import { randomUUID } from 'node:crypto';
import type { TaskInit } from '@kiln/bus';
import { parsePlatform, platformToPb } from '@kiln/protocol';

/**
 * A task for the worker's sleep executor (`sleep-executor.ts`, run by `task-worker-cli.ts`): fresh ids and cache
 * key, steered by `kiln.test.*` labels (sleep, fail, output, a lazy layer).
 */
export function testTask(
  o: {
    platform?: string;
    sleepMs?: number;
    fail?: string;
    cacheKey?: string;
    output?: string;
    /** The result has a layer with no blob (see the sleep executor). */
    lazy?: boolean;
    inputs?: string[];
  } = {},
): TaskInit {
  const description: Record<string, string> = {};
  if (o.sleepMs) description['kiln.test.sleep-ms'] = String(o.sleepMs);
  if (o.fail) description['kiln.test.fail'] = o.fail;
  if (o.output) description['kiln.test.output'] = o.output;
  if (o.lazy) description['kiln.test.lazy'] = '1';
  return {
    taskId: randomUUID(),
    buildId: 'b1',
    vertexDigest: `sha256:${randomUUID().replace(/-/g, '')}`,
    cacheKey: o.cacheKey ?? `sha256:${randomUUID().replace(/-/g, '')}`,
    platform: platformToPb(parsePlatform(o.platform ?? 'linux/amd64')),
    metadata: { description },
    inputs: (o.inputs ?? []).map((resultId) => ({ resultId })),
  };
}
