/**
 * solveGraph's rerun of a lost input, against a fake TaskSubmitter (the farm's answers scripted:
 * what a consumer task reports when its input's holder does not answer).
 */
import { INPUT_LOST_CODE } from '@kiln/bus';
import type { TaskInit, TaskResult } from '@kiln/bus';
import { LinuxAmd64, image, marshal, parseDefinition } from '@kiln/llb';
import { KilnError, platformToPb, workerpb } from '@kiln/protocol';
import { describe, expect, it } from 'vitest';
import { solveGraph } from './solve.js';
import type { TaskSubmitter } from './solve.js';

const def = marshal(
  image('example.com/base:1')
    .run({ args: ['/bin/true'] })
    .root(),
  {
    platform: LinuxAmd64,
  },
);

const result = (workerId: string, resultId: string): TaskResult =>
  workerpb.TaskResult.create({
    taskId: resultId,
    workerId,
    // A layer without a blob: only its holder has it.
    outputs: [{ resultId, layers: [{ diffId: `sha256:${'d'.repeat(64)}`, digest: '' }] }],
  });

describe('solveGraph: a lost input', () => {
  it('whose holder is away while the farm still names it (restarting): waits for it instead of failing after quick reruns', async () => {
    // The image's result stays w1's (the record is not given up: forgetResult changes nothing);
    // w1 does not answer for the exec's first 4 attempts, then it is back.
    let lostFor = 4;
    const forgotten: string[] = [];
    const submitter: TaskSubmitter = {
      submit: (task: TaskInit) => {
        if ((task.inputs ?? []).length === 0) return Promise.resolve(result('w1', 'sha256:src'));
        if (lostFor-- > 0)
          return Promise.reject(
            new KilnError(
              INPUT_LOST_CODE,
              'input 0 (sha256:src) is lost: no responders (holder w1)',
              {
                details: { index: 0, resultId: 'sha256:src', holder: 'w1' },
              },
            ),
          );
        return Promise.resolve(result('w2', 'sha256:run'));
      },
      forgetResult: (cacheKey) => {
        forgotten.push(cacheKey);
        return Promise.resolve();
      },
    };
    const res = await solveGraph(parseDefinition(def.toProto()), {
      submitter,
      buildId: 'b1',
      defaultPlatform: platformToPb(LinuxAmd64),
    });
    expect(res.result.resultId).toBe('sha256:run');
    expect(lostFor).toBe(-1);
    expect(forgotten).toHaveLength(4);
  });

  it('lost more often than the reruns allow: fails with the lost input named', async () => {
    const submitter: TaskSubmitter = {
      submit: (task: TaskInit) =>
        (task.inputs ?? []).length === 0
          ? Promise.resolve(result('w1', 'sha256:src'))
          : Promise.reject(
              new KilnError(INPUT_LOST_CODE, 'input 0 (sha256:src) is lost (holder w1)', {
                details: { index: 0, resultId: 'sha256:src', holder: 'w1' },
              }),
            ),
      forgetResult: () => Promise.resolve(),
    };
    const err = await solveGraph(parseDefinition(def.toProto()), {
      submitter,
      buildId: 'b2',
      defaultPlatform: platformToPb(LinuxAmd64),
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KilnError);
    expect((err as Error).message).toContain('is lost');
  });
});
