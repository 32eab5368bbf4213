/**
 * Subject and name layout of the task bus. Every subject, stream, consumer and bucket name that
 * the scheduler and the workers agree on is built here, never by hand at a call site.
 *
 * - `kiln.task.<os>.<arch>[.<variant>]`: the platform queue for native workers (work-queue stream
 *   `KILN_TASKS`, one durable pull consumer per platform whose filter is that literal subject).
 * - `kiln.task.<os>.<arch>[.<variant>].emulated`: the same platform's queue for workers that run
 *   it through emulation; used only when no native worker of the platform is alive. Literal filter
 *   subjects never overlap, which a work-queue stream requires of its consumers.
 * - `kiln.offer.<workerId>`: core request/reply; the scheduler offers a task to the worker that
 *   holds its inputs before releasing it to the platform queue (delay scheduling).
 * - `kiln.progress.<taskKey>`: core publish of progress events (best effort, not persisted).
 */
import { KilnError, normalizePlatform } from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';

export const TASK_STREAM = 'KILN_TASKS';
export const TASK_SUBJECT_PREFIX = 'kiln.task';
export const OFFER_SUBJECT_PREFIX = 'kiln.offer';
export const PROGRESS_SUBJECT_PREFIX = 'kiln.progress';
export const WORKERS_BUCKET = 'kiln_workers';
export const TASKS_BUCKET = 'kiln_tasks';
export const EMULATED_TOKEN = 'emulated';

export class InvalidNameError extends KilnError {
  constructor(what: string, value: string) {
    super('BUS_INVALID_NAME', `invalid ${what}: ${JSON.stringify(value)}`, {
      details: { what, value },
    });
  }
}

const TOKEN = /^[a-z0-9_-]+$/;
const WORKER_ID = /^[A-Za-z0-9_-]{1,128}$/;

/**
 * The subject tokens of a platform (os, architecture, variant), normalized (containerd's rules,
 * `@kiln/protocol`'s `normalizePlatform`). Throws for names that are not safe subject tokens.
 */
function platformTokens(p: Platform): string[] {
  const n = normalizePlatform(p);
  const tokens: [string, string | undefined][] = [
    ['os', n.os],
    ['arch', n.architecture],
    ['variant', n.variant],
  ];
  for (const [what, v] of tokens) {
    if (v !== undefined && !TOKEN.test(v)) throw new InvalidNameError(`platform ${what}`, v);
  }
  if (n.variant === EMULATED_TOKEN) throw new InvalidNameError('platform variant', n.variant);
  return [n.os, n.architecture, ...(n.variant ? [n.variant] : [])];
}

/** The queue subject of a platform; `emulated` selects the emulation queue. */
export function taskSubject(p: Platform, emulated = false): string {
  const base = [TASK_SUBJECT_PREFIX, ...platformTokens(p)].join('.');
  return emulated ? `${base}.${EMULATED_TOKEN}` : base;
}

/** The durable pull consumer shared by the workers of a platform (native or emulated queue). */
export function taskConsumerName(p: Platform, emulated = false): string {
  return ['kiln-task', ...platformTokens(p), ...(emulated ? ['emu'] : [])].join('-');
}

export function assertWorkerId(id: string): string {
  if (!WORKER_ID.test(id)) throw new InvalidNameError('worker id', id);
  return id;
}

export function offerSubject(workerId: string): string {
  return `${OFFER_SUBJECT_PREFIX}.${assertWorkerId(workerId)}`;
}

/** Progress of the task stored under `key` ({@link taskKey}); subscribe to `kiln.progress.>`. */
export function progressSubject(key: string): string {
  return `${PROGRESS_SUBJECT_PREFIX}.${key}`;
}

/** `$JS.EVENT.ADVISORY...MAX_DELIVERIES` for every consumer of the task stream. */
export const MAX_DELIVERIES_ADVISORY = `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${TASK_STREAM}.*`;

/**
 * The KV key of a cache key. KV keys allow `[-/_=.A-Za-z0-9]`; a digest `algo:hex` becomes
 * `algo.hex` (readable), anything else `b64.<base64url>`.
 */
export function taskKey(cacheKey: string): string {
  if (!cacheKey) throw new InvalidNameError('cache key', cacheKey);
  const m = /^([a-z0-9]+):([a-f0-9]+)$/.exec(cacheKey);
  if (m && m[1] !== 'b64') return `${m[1]}.${m[2]}`;
  return `b64.${Buffer.from(cacheKey, 'utf8').toString('base64url')}`;
}
