/**
 * Frontend inputs as the control API carries them: `frontend_inputs["dockerfile"]` is a small
 * Definition whose file op writes the Dockerfile (and optionally its `.dockerignore`) with
 * `mkfile` (`@kiln/client`'s `dockerfileInput()` makes it). The scheduler reads the files from
 * the op without running anything. Reading the Dockerfile from a client session (BuildKit's
 * `dockerfile` local) comes with the session service.
 */
import { parseDefinition } from '@kiln/llb';
import type { pb } from '@kiln/protocol';
import { SolveRequestInvalidError } from '../solver/errors.js';

/** Files written by mkfile actions of the definition, by path without a leading slash. */
export function filesOf(def: pb.IDefinition): Map<string, Uint8Array> {
  const g = parseDefinition(def);
  const files = new Map<string, Uint8Array>();
  for (const d of g.order) {
    for (const a of g.ops.get(d)!.op.file?.actions ?? []) {
      if (a.mkfile?.path)
        files.set(a.mkfile.path.replace(/^\/+/, ''), a.mkfile.data ?? new Uint8Array());
    }
  }
  return files;
}

export interface DockerfileSource {
  dockerfile: Uint8Array;
  dockerignore?: Uint8Array;
  /** Named context directories' ignore files, by their `local:NAME`. */
  namedDockerignores?: Record<string, Uint8Array>;
}

/** `@kiln/client`'s `namedDockerignorePath`: `.kiln-context-<uri-encoded local name>.dockerignore`. */
const NAMED_DOCKERIGNORE = /^\.kiln-context-([^/]+)\.dockerignore$/;

/** The Dockerfile (attr `filename`, default `Dockerfile`) and its ignore file from the inputs. */
export function dockerfileSource(
  inputs: Record<string, pb.IDefinition>,
  attrs: Record<string, string>,
): DockerfileSource {
  const def = inputs.dockerfile;
  if (!def) throw new SolveRequestInvalidError('frontend input "dockerfile" is missing');
  const files = filesOf(def);
  const name = (attrs.filename || 'Dockerfile').replace(/^\/+/, '');
  const dockerfile = files.get(name);
  if (!dockerfile)
    throw new SolveRequestInvalidError(`frontend input "dockerfile" has no file ${name}`, {
      filename: name,
    });
  const dockerignore = files.get(`${name}.dockerignore`) ?? files.get('.dockerignore');
  const named: Record<string, Uint8Array> = {};
  for (const [path, data] of files) {
    const m = NAMED_DOCKERIGNORE.exec(path);
    if (!m) continue;
    let local: string;
    try {
      local = decodeURIComponent(m[1]!);
    } catch (cause) {
      throw new SolveRequestInvalidError(`frontend input "dockerfile": bad file name ${path}`, {
        cause: String(cause),
      });
    }
    named[local] = data;
  }
  return {
    dockerfile,
    ...(dockerignore ? { dockerignore } : {}),
    ...(Object.keys(named).length > 0 ? { namedDockerignores: named } : {}),
  };
}
