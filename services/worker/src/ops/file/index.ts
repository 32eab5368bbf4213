export { executeFileOp, inputsRead } from './execute.js';
export type { ExecuteFileOpOptions, FileOpResult, MutableFactory } from './execute.js';
export { FileOpError, FileOpErrorCode } from './errors.js';
export { copyingMutable } from './mutable.js';
export { resolveOwner } from './user.js';
export type { RootForInput } from './user.js';
