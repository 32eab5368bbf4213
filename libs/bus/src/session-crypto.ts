/**
 * End-to-end encryption of the session relay (`session.ts`): the worker that holds a task's claim
 * and the scheduler that holds the task's client session agree on keys (X25519, one fresh pair per
 * side per channel, node:crypto), derive two directional AES-256-GCM keys with HKDF-SHA256 bound
 * to the session, the worker, the task attempt and both public keys, and seal every message of the
 * channel. The bus (a sniffer on `>`, a worker-role client) sees only ciphertext.
 *
 * A sealed message is `nonce (12) | ciphertext | tag (16)`; the additional data is the message
 * kind, so a message cannot be replayed as another kind; the keys are the channel's own (fresh
 * pairs), so it cannot be replayed on another channel either.
 */
import {
  createCipheriv,
  createDecipheriv,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
} from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { KilnError } from '@kiln/protocol';

const NONCE = 12;
const TAG = 16;
const INFO = 'kiln-session-v1';

/** One side's ephemeral X25519 pair; `publicKey` is the raw key, base64url (43 chars). */
export interface SessionKeyPair {
  publicKey: string;
  privateKey: KeyObject;
}

export function sessionKeyPair(): SessionKeyPair {
  const { publicKey, privateKey } = generateKeyPairSync('x25519');
  const jwk = publicKey.export({ format: 'jwk' });
  return { publicKey: jwk.x ?? '', privateKey };
}

const PUB = /^[A-Za-z0-9_-]{43}$/;

function importPublic(raw: string): KeyObject {
  if (!PUB.test(raw))
    throw new KilnError('SESSION_PROTOCOL', 'a session public key is not a raw X25519 key');
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: raw }, format: 'jwk' });
}

/** What both sides bind the channel's keys to (each must be the same on both sides). */
export interface SessionChannelBinding {
  sessionId: string;
  workerId: string;
  /** The task record's key and the claimed attempt's token. */
  key: string;
  token: string;
  workerPublicKey: string;
  schedulerPublicKey: string;
}

/** Seals what this side sends and opens what the other side sent, on one channel. */
export class SessionCipher {
  readonly #send: Buffer;
  readonly #recv: Buffer;

  constructor(send: Buffer, recv: Buffer) {
    this.#send = send;
    this.#recv = recv;
  }

  /** The cipher of one side: `own` is this side's pair, `role` which side it is. */
  static derive(
    own: SessionKeyPair,
    role: 'worker' | 'scheduler',
    b: SessionChannelBinding,
  ): SessionCipher {
    const peer = importPublic(role === 'worker' ? b.schedulerPublicKey : b.workerPublicKey);
    const shared = diffieHellman({ privateKey: own.privateKey, publicKey: peer });
    const info = [
      INFO,
      b.sessionId,
      b.workerId,
      b.key,
      b.token,
      b.workerPublicKey,
      b.schedulerPublicKey,
    ].join('\0');
    const okm = Buffer.from(hkdfSync('sha256', shared, Buffer.alloc(0), info, 64));
    const toScheduler = okm.subarray(0, 32);
    const toWorker = okm.subarray(32, 64);
    return role === 'worker'
      ? new SessionCipher(toScheduler, toWorker)
      : new SessionCipher(toWorker, toScheduler);
  }

  seal(kind: string, plain: Uint8Array): Uint8Array {
    const nonce = randomBytes(NONCE);
    const c = createCipheriv('aes-256-gcm', this.#send, nonce);
    c.setAAD(Buffer.from(kind));
    const body = Buffer.concat([c.update(plain), c.final()]);
    return Buffer.concat([nonce, body, c.getAuthTag()]);
  }

  /** Throws SESSION_PROTOCOL for a message not sealed by the peer for `kind` on this channel. */
  open(kind: string, sealed: Uint8Array): Buffer {
    const b = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
    if (b.length < NONCE + TAG)
      throw new KilnError('SESSION_PROTOCOL', 'a sealed session message is too short');
    try {
      const d = createDecipheriv('aes-256-gcm', this.#recv, b.subarray(0, NONCE));
      d.setAAD(Buffer.from(kind));
      d.setAuthTag(b.subarray(b.length - TAG));
      return Buffer.concat([d.update(b.subarray(NONCE, b.length - TAG)), d.final()]);
    } catch (cause) {
      throw new KilnError('SESSION_PROTOCOL', 'a session message failed authentication', {
        cause,
      });
    }
  }
}

/** A channel's capability: 256 random bits, base64url (a subject token). */
export function newSessionCapability(): string {
  return randomBytes(32).toString('base64url');
}
