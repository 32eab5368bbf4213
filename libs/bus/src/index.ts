/**
 * @kiln/bus: the task bus the scheduler and the workers share over NATS JetStream. Subject and
 * bucket names, message codecs, task records with the attempt-fencing rules, worker registrations.
 */
export * from './subjects.js';
export * from './codec.js';
export * from './task-record.js';
export * from './worker-info.js';
export * from './bus.js';
export * from './retry.js';
export * from './progress.js';
export * from './watch.js';
export * from './offer.js';
export * from './session.js';
export * from './session-crypto.js';
export * from './checksum.js';
export * from './materialize.js';
export * from './record-service.js';
export * from './nats-connect.js';
export * from './nats-permissions.js';
export * from './gc.js';
export * from './task-consumer.js';
export * from './cache-mounts.js';
