import { reviveError } from '@kiln/protocol';
import { describe, expect, it } from 'vitest';
import { SecretNotFoundError, SshNotFoundError } from './errors.js';

describe('exec errors from the wire', () => {
  it('name the secret or ssh id from the details, or keep the message when the details are lost', () => {
    const s = reviveError('SECRET_NOT_FOUND', 'secret tok not found', { id: 'tok' }, false);
    expect(s).toBeInstanceOf(SecretNotFoundError);
    expect(s.message).toBe('secret tok not found');
    const cut = reviveError('SECRET_NOT_FOUND', 'secret tok not found', {}, false);
    expect(cut).toBeInstanceOf(SecretNotFoundError);
    expect(cut.message).toBe('secret tok not found');
    const ssh = reviveError(
      'SSH_NOT_FOUND',
      'no SSH key "gh" forwarded from the client',
      {},
      false,
    );
    expect(ssh).toBeInstanceOf(SshNotFoundError);
    expect(ssh.message).toContain('"gh"');
  });
});
