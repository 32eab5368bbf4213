// The session channel's key agreement and sealing (node:crypto X25519, HKDF-SHA256, AES-256-GCM).
import { describe, expect, it } from 'vitest';
import { SessionCipher, newSessionCapability, sessionKeyPair } from './session-crypto.js';
import type { SessionChannelBinding } from './session-crypto.js';

function channel(over: Partial<SessionChannelBinding> = {}) {
  const w = sessionKeyPair();
  const s = sessionKeyPair();
  const b: SessionChannelBinding = {
    sessionId: 'sess-1',
    workerId: 'w1',
    key: 'sha256.ab',
    token: 'tok-1',
    workerPublicKey: w.publicKey,
    schedulerPublicKey: s.publicKey,
  };
  return {
    worker: SessionCipher.derive(w, 'worker', b),
    scheduler: SessionCipher.derive(s, 'scheduler', { ...b, ...over }),
  };
}

describe('session channel sealing', () => {
  it('opens what the other side sealed, in each direction, and hides the plaintext', () => {
    const { worker, scheduler } = channel();
    const secret = Buffer.from('s3cret-value');
    const up = worker.seal('secret', secret);
    expect(Buffer.from(up).includes(secret)).toBe(false);
    expect(Buffer.from(up).includes(Buffer.from(secret.toString('base64')))).toBe(false);
    expect(scheduler.open('secret', up)).toEqual(secret);
    const down = scheduler.seal('secret.reply', secret);
    expect(worker.open('secret.reply', down)).toEqual(secret);
    // Empty plaintexts (an ssh close) seal and open too.
    expect(worker.open('ssh.down', scheduler.seal('ssh.down', new Uint8Array(0))).length).toBe(0);
  });

  it('refuses a message of another kind, direction or channel, and a tampered one', () => {
    const { worker, scheduler } = channel();
    const m = worker.seal('secret', Buffer.from('x'));
    expect(() => scheduler.open('auth', m)).toThrow(/authentication/);
    // A side never opens its own messages (one key per direction).
    expect(() => worker.open('secret', m)).toThrow(/authentication/);
    const other = channel();
    expect(() => other.scheduler.open('secret', m)).toThrow(/authentication/);
    const bad = Buffer.from(m);
    bad[bad.length - 1]! ^= 1;
    expect(() => scheduler.open('secret', bad)).toThrow(/authentication/);
    expect(() => scheduler.open('secret', new Uint8Array(8))).toThrow(/too short/);
  });

  it('binds the keys to the claim: a different token derives different keys', () => {
    const { worker, scheduler } = channel({ token: 'tok-2' });
    expect(() => scheduler.open('secret', worker.seal('secret', Buffer.from('x')))).toThrow(
      /authentication/,
    );
  });

  it('makes 256-bit capabilities that are subject tokens', () => {
    const a = newSessionCapability();
    expect(a).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(newSessionCapability()).not.toBe(a);
  });
});
