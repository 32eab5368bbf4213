/** `kiln` as its own process for tests (bundled from source): what a user's shell runs. */
import { main } from '@kiln/cli';

process.exitCode = await main(process.argv);
