import type { pb } from '@kiln/protocol';

/** The name progress shows for a vertex: its custom name, else a short description of the op. */
export function vertexName(op: pb.IOp, metadata: pb.IOpMetadata | undefined): string {
  const custom = metadata?.description?.['llb.customname'];
  if (custom) return custom;
  if (op.exec) return (op.exec.meta?.args ?? []).join(' ');
  if (op.source) return op.source.identifier ?? 'source';
  if (op.file) {
    return (op.file.actions ?? [])
      .map((a) => {
        if (a.copy) return `copy ${a.copy.src ?? ''} ${a.copy.dest ?? ''}`;
        if (a.mkdir) return `mkdir ${a.mkdir.path ?? ''}`;
        if (a.mkfile) return `mkfile ${a.mkfile.path ?? ''}`;
        if (a.rm) return `rm ${a.rm.path ?? ''}`;
        if (a.symlink) return `symlink ${a.symlink.newpath ?? ''} -> ${a.symlink.oldpath ?? ''}`;
        return 'file';
      })
      .join(', ');
  }
  if (op.merge) return `merge (${(op.merge.inputs ?? []).length} inputs)`;
  if (op.diff) return 'diff';
  if (op.build) return 'build';
  return 'vertex';
}
