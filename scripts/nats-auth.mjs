#!/usr/bin/env node
// Generates a farm's NATS users with the role permissions of `@kiln/bus` (nats-permissions.ts):
//
//   node scripts/nats-auth.mjs --out DIR --worker ID [--worker ID ...] [--nkeys]
//
// Writes, each 0600, into DIR: `auth.conf` (the nats-server `authorization` block that
// deploy/nats/nats-server.conf includes), and per role the environment the service reads:
// `scheduler.env`, `cache-store.env` (the store collector's read-only user) and `worker-<ID>.env`
// (KILN_NATS_USER / KILN_NATS_PASSWORD), or with --nkeys `scheduler.nk`, `cache-store.nk` and
// `worker-<ID>.nk` (nkey seeds; the config then holds public keys only, and
// the env files name the seed file: KILN_NATS_NKEY). Needs a build (`npm run build`).
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { generateFarmAuth } from '@kiln/bus';

const { values } = parseArgs({
  options: {
    out: { type: 'string' },
    worker: { type: 'string', multiple: true },
    nkeys: { type: 'boolean' },
  },
  strict: true,
});
if (!values.out || !values.worker?.length) {
  process.stderr.write(
    'usage: node scripts/nats-auth.mjs --out DIR --worker ID [--worker ID ...] [--nkeys]\n',
  );
  process.exit(2);
}
const out = resolve(values.out);
mkdirSync(out, { recursive: true, mode: 0o700 });
const secret = (name, text) => {
  const p = join(out, name);
  writeFileSync(p, text, { mode: 0o600 });
  chmodSync(p, 0o600);
  return p;
};
const auth = generateFarmAuth(values.worker, { nkeys: values.nkeys === true });
secret('auth.conf', auth.config);
const envOf = (name, a, seed) => {
  if (seed !== undefined) return `KILN_NATS_NKEY=${secret(`${name}.nk`, `${seed}\n`)}\n`;
  return `KILN_NATS_USER=${a.user}\nKILN_NATS_PASSWORD=${a.password}\n`;
};
secret('scheduler.env', envOf('scheduler', auth.scheduler, auth.seeds?.scheduler));
secret('cache-store.env', envOf('cache-store', auth.cacheStore, auth.seeds?.cacheStore));
for (const id of values.worker)
  secret(`worker-${id}.env`, envOf(`worker-${id}`, auth.workers[id], auth.seeds?.workers[id]));
process.stdout.write(
  `${out}: auth.conf, scheduler.env, cache-store.env, ${values.worker.map((id) => `worker-${id}.env`).join(', ')}\n`,
);
