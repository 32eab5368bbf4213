/**
 * Test support for the task consumer (used by `*.test.ts` only; not built into dist):
 * scheduler-less task submission through the bus primitives.
 */
import type { Bus, TaskInit, TaskRecord } from '@kiln/bus';
import {
  createRecord,
  encodeTask,
  getRecord,
  redispatchRule,
  taskKey,
  taskSubject,
  toBase64,
} from '@kiln/bus';
import { formatPlatform, platformFromPb } from '@kiln/protocol';

/**
 * What the scheduler does for a first dispatch, minus placement: the record, then the queue
 * message (`offer: true`: the record only, as for an attempt offered to a worker).
 */
export async function enqueueRaw(
  bus: Bus,
  task: TaskInit,
  o: { offer?: boolean } = {},
): Promise<TaskRecord> {
  const platform = platformFromPb(task.platform);
  if (platform === undefined) throw new Error('a test task needs a platform');
  const now = Date.now();
  const rec = redispatchRule(
    {
      v: 1,
      taskId: task.taskId ?? '',
      cacheKey: task.cacheKey ?? '',
      platform: formatPlatform(platform),
      attempt: 0,
      attemptToken: '',
      state: 'queued',
      builds: [task.buildId ?? ''],
      task: toBase64(encodeTask(task)),
      createdAt: now,
      dispatchedAt: now,
    },
    o.offer ? 'offer' : 'native',
    undefined,
  );
  const rev = await createRecord(bus.tasks, taskKey(task.cacheKey ?? ''), rec);
  if (rev === false) throw new Error('key exists');
  if (o.offer) return rec;
  await bus.js.publish(
    taskSubject(platform),
    encodeTask({ ...task, attemptToken: rec.attemptToken, attempt: rec.attempt }),
  );
  return rec;
}

export async function recordOf(bus: Bus, cacheKey: string): Promise<TaskRecord | undefined> {
  return (await getRecord(bus.tasks, taskKey(cacheKey)))?.record;
}
