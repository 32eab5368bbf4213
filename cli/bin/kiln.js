#!/usr/bin/env node
// The kiln command. `npm run build` at the repository root compiles the code to dist/ and bundles
// it into dist/bundle/ (one file to load instead of hundreds of modules: see
// scripts/bundle-cli.mjs).
import { main } from '../dist/bundle/main.js';

process.exitCode = await main(process.argv);
