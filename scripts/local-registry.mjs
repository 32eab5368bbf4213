// Serves the fixture busybox image (linux/amd64 + linux/arm64) from a throwaway local registry,
// for demos on machines that reach no registry. Prints the registry address on the first line of
// stdout, then runs until its standard input closes (its parent went away) or SIGTERM.
import { pushFixtures, startRegistry } from '../test/dist/harness/index.js';

const reg = await startRegistry();
await pushFixtures(reg.addr);
process.stdout.write(`${reg.addr}\n`);
let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await reg.stop();
  process.exit(0);
};
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
