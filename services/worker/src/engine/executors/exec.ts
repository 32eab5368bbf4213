/**
 * ExecOp executor: `runExec` (mounts of every type, the OCI runtime) with the build session's
 * secrets and ssh agents, live output forwarded as progress logs.
 */
import type { ExecEnv } from '../../ops/exec/index.js';
import { runExec } from '../../ops/exec/index.js';
import type { ExecutorContext, OpExecutor } from '../../solver/solver.js';

/** The exec environment without the per-build session providers; the runtime opens on first use. */
export type ExecBase = Omit<ExecEnv, 'secrets' | 'ssh' | 'runtime'> & {
  runtime: () => Promise<ExecEnv['runtime']>;
};

export class ExecExecutor implements OpExecutor {
  constructor(private readonly base: ExecBase) {}

  async exec(ctx: ExecutorContext): Promise<(string | undefined)[]> {
    const { runtime, ...rest } = this.base;
    const env: ExecEnv = { ...rest, runtime: await runtime() };
    if (ctx.session.secrets) env.secrets = ctx.session.secrets;
    if (ctx.session.ssh) env.ssh = ctx.session.ssh;
    const res = await runExec(env, {
      op: ctx.op.exec!,
      inputs: ctx.inputs,
      signal: ctx.signal,
      onOutput: (stream, data) => ctx.log(stream === 'stderr' ? 2 : 1, data),
    });
    const outputs: (string | undefined)[] = [];
    for (const [i, name] of res.outputs) outputs[i] = name;
    return outputs;
  }
}
