/**
 * Offers (delay scheduling). The scheduler sends a task to `kiln.offer.<workerId>` as a core
 * request: the body is the encoded Task (with its attempt token), the header
 * {@link OFFER_WAIT_HEADER} says how long the worker may hold the offer waiting for a free slot.
 * The worker claims the attempt in `kiln_tasks` (compare-and-set) before it replies `accepted`;
 * it replies `declined` when it cannot run the task in time. No reply (or no responders) counts
 * as declined. A late accept is harmless: whoever claims the token first runs it, the other copy
 * is stale.
 */
export const OFFER_WAIT_HEADER = 'Kiln-Offer-Wait-Ms';

export interface OfferReply {
  accepted: boolean;
  reason?: 'busy' | 'draining' | 'stale' | 'platform';
}

/**
 * Every copy of a task (queue message or offer) carries the record of its attempt as written by
 * the scheduler (without the `task` field, which the body already is) and that record's revision,
 * so that the claim is a single compare-and-set: no read first. When the record changed since
 * (a build joined), the compare-and-set fails and the claimer reads it and tries again.
 */
export const RECORD_HEADER = 'Kiln-Record';
export const RECORD_REV_HEADER = 'Kiln-Record-Rev';

/**
 * Optional, on a task copy: the length of the body's prefix that is the task without its attempt
 * fields (the body is that prefix followed by the attempt fields, `encodeAttemptTask`). The
 * claimer rebuilds the record's `task` from the prefix instead of re-encoding the task; it checks
 * that the rest is exactly the attempt fields and re-encodes otherwise.
 */
export const TASK_LEN_HEADER = 'Kiln-Task-Len';
