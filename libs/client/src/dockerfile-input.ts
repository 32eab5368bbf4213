/**
 * The `dockerfile` frontend input of a Solve: a Definition whose file op writes the Dockerfile
 * (and its ignore file) with mkfile, which the scheduler reads without running anything.
 */
import { marshal, mkfile, scratch } from '@kiln/llb';
import type { Definition } from '@kiln/llb';

export function dockerfileInput(
  dockerfile: string | Uint8Array,
  o: { dockerignore?: string | Uint8Array; filename?: string } = {},
): Definition {
  const name = o.filename ?? 'Dockerfile';
  let st = scratch().file(mkfile(`/${name}`, 0o644, dockerfile));
  if (o.dockerignore !== undefined)
    st = st.file(mkfile(`/${name}.dockerignore`, 0o644, o.dockerignore));
  return marshal(st);
}
