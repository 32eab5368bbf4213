import { KilnError, registerErrorClass } from '@kiln/protocol';

/**
 * A Definition (or a graph being built) is not valid LLB. `code` says which rule failed; `digest`
 * names the vertex when one is at fault.
 */
export class InvalidDefinitionError extends KilnError {
  readonly digest: string | undefined;

  constructor(
    code: LlbErrorCode,
    message: string,
    opts: { digest?: string; cause?: unknown } = {},
  ) {
    super(code, opts.digest ? `${message} (vertex ${opts.digest})` : message, {
      cause: opts.cause,
      details: { digest: opts.digest },
    });
    this.digest = opts.digest;
  }
}

export type LlbErrorCode =
  | 'LLB_MALFORMED' // bytes that do not decode as protobuf messages
  | 'LLB_EMPTY' // no ops at all
  | 'LLB_NO_TERMINAL' // the last op is not a terminal (no op body, exactly one input)
  | 'LLB_DANGLING_INPUT' // an input names a digest that is not in the Definition
  | 'LLB_BAD_OUTPUT_INDEX' // an input selects an output the op does not have
  | 'LLB_CYCLE' // the inputs form a cycle
  | 'LLB_UNKNOWN_OP' // an op with no known kind (exec, source, file, build, merge, diff)
  | 'LLB_INVALID_OP' // an op whose fields are inconsistent (bad mount input index, empty args...)
  | 'LLB_BUILD'; // the builder API was used in a way that cannot be marshaled

for (const code of [
  'LLB_MALFORMED',
  'LLB_EMPTY',
  'LLB_NO_TERMINAL',
  'LLB_DANGLING_INPUT',
  'LLB_BAD_OUTPUT_INDEX',
  'LLB_CYCLE',
  'LLB_UNKNOWN_OP',
  'LLB_INVALID_OP',
  'LLB_BUILD',
] as const) {
  registerErrorClass(code, (message, details) => {
    const e = new InvalidDefinitionError(code, message);
    if (typeof details.digest === 'string')
      (e as { digest: string | undefined }).digest = details.digest;
    return e;
  });
}
