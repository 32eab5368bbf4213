// tsc does not copy the committed protobufjs output (src/gen/*.js); copy it next to the compiled code.
import { cpSync, existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const src = 'libs/protocol/src/gen';
const dst = 'libs/protocol/dist/gen';
if (existsSync(src)) {
  mkdirSync(dst, { recursive: true });
  for (const f of readdirSync(src))
    if (f.endsWith('.js') || f.endsWith('.d.ts')) cpSync(join(src, f), join(dst, f));
}
