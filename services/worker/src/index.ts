export * from './ops/exec/index.js';
export * from './ops/file/index.js';
export * from './sources/image/index.js';
export * from './tasks/index.js';
export { Engine } from './engine/engine.js';
export type { EngineOptions, ExportSpec } from './engine/engine.js';
export { LocalSolver } from './solver/solver.js';
export type {
  ExecutorContext,
  OpExecutor,
  SessionProviders,
  SolveOptions,
  SolveResult,
} from './solver/solver.js';
export type { ProgressEvent } from './solver/progress.js';
export { VertexError, SolveCanceledError } from './solver/errors.js';
export { benchExec } from './runtime/bench-exec.js';
export type { BenchExecResult } from './runtime/bench-exec.js';
export * from './node/index.js';
export { LocalContexts, contextKey } from './sources/local/local-contexts.js';
export type { ContextOutcome, ContextSnapshot } from './sources/local/local-contexts.js';
