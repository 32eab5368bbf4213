/**
 * The control API's DiskUsage and Prune for a farm: the scheduler asks every registered worker
 * over `kiln.gc.<workerId>` (`@kiln/bus` gc.ts) for its usage records, or to prune by the
 * request's policy, and aggregates. Each worker applies the policy to its own cache (BuildKit's
 * prune semantics per worker: `keep_bytes` is per worker), never removing what a running task
 * holds or what was made or used within its GC grace period.
 *
 * - A record's description names the worker that holds it (`... on <workerId>`): two workers may
 *   hold the same layer, under the same id.
 * - A worker that left between the listing and the request (no responders) is skipped; one that
 *   does not answer in time, or answers an error, fails the call (`GC_WORKER_FAILED`), after the
 *   records other workers removed were streamed.
 * - Prune streams each removed record as its worker reports it.
 */
import { decodeGcReply, encodeGcJson, gcSubject, listWorkers } from '@kiln/bus';
import type { Bus, GcRequest, GcUsageRecord } from '@kiln/bus';
import { KilnError, control, toLong } from '@kiln/protocol';
import type { NatsConnection } from '@nats-io/transport-node';

export type UsageRecord = InstanceType<typeof control.UsageRecord>;

export interface FarmGcOptions {
  nc: NatsConnection;
  bus: Pick<Bus, 'workers'>;
  /** How long a worker may take to answer DiskUsage (default 60 s) and Prune (default 10 min). */
  duTimeoutMs?: number;
  pruneTimeoutMs?: number;
}

/** Every worker's usage records, filtered (BuildKit's filters), in worker order. */
export async function farmDiskUsage(o: FarmGcOptions, filter: string[]): Promise<UsageRecord[]> {
  const out: UsageRecord[] = [];
  await eachWorker(o, { op: 'du', filter }, o.duTimeoutMs ?? 60_000, (w, recs) => {
    for (const r of recs) out.push(toUsageRecord(w, r));
  });
  return out;
}

/** Prunes every worker by `req`; `onRecord` gets each removed record. */
export async function farmPrune(
  o: FarmGcOptions,
  req: InstanceType<typeof control.PruneRequest>,
  onRecord: (r: UsageRecord) => void,
): Promise<void> {
  const keepDurationMs = Number(req.keepDurationSeconds ?? 0) * 1000;
  const keepBytes = Number(req.keepBytes ?? 0);
  if (!(keepDurationMs >= 0) || !(keepBytes >= 0) || !Number.isSafeInteger(keepBytes))
    throw new KilnError('INVALID_ARGUMENT', 'keep_duration and keep_bytes must not be negative');
  await eachWorker(
    o,
    { op: 'prune', filter: req.filter ?? [], all: req.all === true, keepDurationMs, keepBytes },
    o.pruneTimeoutMs ?? 600_000,
    (w, recs) => {
      for (const r of recs) onRecord(toUsageRecord(w, r));
    },
  );
}

async function eachWorker(
  o: FarmGcOptions,
  req: GcRequest,
  timeoutMs: number,
  onRecords: (workerId: string, records: GcUsageRecord[]) => void,
): Promise<void> {
  const workers = (await listWorkers(o.bus.workers)).map((w) => w.id).sort();
  const failures: string[] = [];
  await Promise.all(
    workers.map(async (id) => {
      let data: Uint8Array;
      try {
        data = (await o.nc.request(gcSubject(id), encodeGcJson(req), { timeout: timeoutMs })).data;
      } catch (err) {
        // Gone since the listing: nothing of its cache to report.
        if ((err as { code?: string }).code === '503' || /no responders/i.test(String(err))) return;
        failures.push(`${id}: ${err instanceof Error ? err.message : String(err)}`);
        return;
      }
      const reply = decodeGcReply(data);
      if ('error' in reply) {
        // A request every worker rejects the same way (a bad filter) keeps its own code.
        if (reply.error.code === 'GC_FILTER_INVALID' || reply.error.code === 'GC_PROTOCOL')
          throw new KilnError('INVALID_ARGUMENT', reply.error.message, {
            details: { code: reply.error.code },
          });
        failures.push(`${id}: ${reply.error.code}: ${reply.error.message}`);
        return;
      }
      onRecords(id, reply.records);
    }),
  );
  if (failures.length > 0)
    throw new KilnError('GC_WORKER_FAILED', `workers failed: ${failures.join('; ')}`, {
      retryable: true,
    });
}

function toUsageRecord(workerId: string, r: GcUsageRecord): UsageRecord {
  const nanos = (ms: number) => toLong(BigInt(Math.trunc(ms)) * 1_000_000n);
  return control.UsageRecord.create({
    id: r.id,
    mutable: r.mutable,
    inUse: r.inUse,
    size: toLong(Math.trunc(r.size)),
    parents: r.parents,
    createdAtUnixNano: nanos(r.createdAtMs),
    lastUsedAtUnixNano: nanos(r.lastUsedAtMs),
    usageCount: toLong(Math.trunc(r.usageCount)),
    description: `${r.description} on ${workerId}`,
    recordType: r.recordType,
    shared: r.shared,
  });
}
