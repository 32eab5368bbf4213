/**
 * The mark set of the store's collector: every digest the cache index names.
 *
 * A record (`@kiln/bus` task-record.ts) is JSON whose `task` and `result` fields are base64
 * protobuf. Rather than decode each shape (and miss a field added later), the collector reads
 * the record's JSON and the raw bytes of those two fields and keeps every `sha256:<64 hex>` it
 * finds: protobuf stores strings as their bytes, so a digest inside (a layer of the result, the
 * image or context a source op names, a nested op's input) appears as it is. Over-marking is
 * safe (a blob kept longer); under-marking is not.
 */
import { CACHE_MOUNTS_BUCKET, TASKS_BUCKET } from '@kiln/bus';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';

const DIGEST = /sha256:[a-f0-9]{64}/g;

/** The digests one record value names. */
export function recordDigests(value: Uint8Array, into: Set<string> = new Set()): Set<string> {
  const json = Buffer.from(value).toString('utf8');
  for (const m of json.matchAll(DIGEST)) into.add(m[0]);
  let rec: { task?: unknown; result?: unknown };
  try {
    rec = JSON.parse(json) as typeof rec;
  } catch {
    return into;
  }
  for (const f of [rec.task, rec.result]) {
    if (typeof f !== 'string') continue;
    const raw = Buffer.from(f, 'base64').toString('latin1');
    for (const m of raw.matchAll(DIGEST)) into.add(m[0]);
  }
  return into;
}

/**
 * Every digest the live records of the cache index name, and the current version of every
 * cache mount shared across workers (`kiln_cache_mounts`; one pass over each bucket).
 */
export async function liveDigests(nc: NatsConnection): Promise<Set<string>> {
  const out = new Set<string>();
  await bucketDigests(nc, TASKS_BUCKET, out);
  await bucketDigests(nc, CACHE_MOUNTS_BUCKET, out).catch((err: unknown) => {
    // A farm whose scheduler predates shared cache mounts has no such bucket: nothing to mark.
    if (!/stream not found/i.test(String((err as Error).message))) throw err;
  });
  return out;
}

async function bucketDigests(nc: NatsConnection, bucket: string, out: Set<string>): Promise<void> {
  const kv = await new Kvm(nc).open(bucket);
  if ((await kv.status()).values === 0) return;
  // Deletes are seen too (and skipped): an initial pass of tombstones only must still end.
  const it = await kv.watch();
  try {
    for await (const e of it) {
      if (e.operation === 'PUT' && e.length > 0) recordDigests(e.value, out);
      if (!e.delta) break; // the last value of the initial pass
    }
  } finally {
    it.stop();
  }
}
