#!/usr/bin/env node
// The kiln command. The code is compiled to dist/ by `npm run build` at the repository root.
import { main } from '../dist/main.js';

process.exitCode = await main(process.argv);
