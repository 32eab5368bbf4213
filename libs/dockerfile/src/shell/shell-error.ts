import { KilnError } from '@kiln/protocol';

/** The stable code of a failed variable expansion or word split. */
export const DOCKERFILE_EXPANSION = 'DOCKERFILE_EXPANSION';

/**
 * A word the shell lexer cannot expand: bad `${}` syntax, an unterminated quote, `${v:?msg}` on an
 * unset or empty variable. The lexer knows no line numbers; the instruction that expands the word
 * wraps this into a DockerfileError for its lines.
 */
export class ShellExpansionError extends KilnError {
  constructor(message: string, opts: { cause?: unknown } = {}) {
    super(DOCKERFILE_EXPANSION, message, opts);
  }
}
