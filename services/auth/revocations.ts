import type { CredentialRevocations } from '../../lib/auth/identity.js';
import type { Notifier } from '../../lib/db/notifier.js';
import type { Logger } from '../../lib/logger.js';
import { revokedCertificateMessage } from './domain/certificate.js';
import {
  REVOCATIONS_CHANNEL,
  type CertificateRepository,
  type RevokedCredentials,
} from './store/certificate.repository.js';

/**
 * What is revoked, in each replica's memory, so that checking a call's certificate costs a map lookup
 * (services/auth/DESIGN.md, "Revocation"). Refreshed when NOTIFY weft_revocations wakes it (a revocation on any
 * replica) and at least every `pollMs` (a lost notification delays, never loses, a revocation): each refresh asks
 * for two row counts and reads the rows again only when they changed. Until the first read succeeds the control
 * plane does not serve (startRevocationList resolves after it).
 */
export interface RevocationList extends CredentialRevocations {
  /** Reads again now (tests; after a revocation made by this replica). */
  refresh(): Promise<void>;
  stop(): void;
}

export async function startRevocationList(deps: {
  repo: CertificateRepository;
  notifier: Notifier;
  logger: Logger;
  pollMs?: number;
}): Promise<RevocationList> {
  const pollMs = deps.pollMs ?? 2000;
  let current: RevokedCredentials = { certificates: new Map(), tokens: new Map() };
  let version = '';
  const listeners = new Set<() => void>();
  const ac = new AbortController();
  let failing = false;

  async function refresh(): Promise<void> {
    const v = await deps.repo.revocationVersion();
    if (v === version) return;
    current = await deps.repo.revoked(new Date());
    version = v;
    for (const l of [...listeners]) {
      try {
        l();
      } catch (err) {
        deps.logger.error('revocation listener failed', { err });
      }
    }
  }
  await refresh();
  void (async () => {
    while (!ac.signal.aborted) {
      await deps.notifier.wait(REVOCATIONS_CHANNEL, pollMs, ac.signal);
      if (ac.signal.aborted) break;
      try {
        await refresh();
        if (failing) deps.logger.info('revocations read again');
        failing = false;
      } catch (err) {
        // What was read last stays in force; the next wake-up tries again.
        if (!failing)
          deps.logger.warn('cannot read revocations; keeping the last list', { err: (err as Error).message });
        failing = true;
      }
    }
  })();

  return {
    certificate(serial) {
      const r = current.certificates.get(serial);
      return r ? revokedCertificateMessage(serial, r) : null;
    },
    token(keyId) {
      const t = current.tokens.get(keyId);
      return t
        ? `token ${t.name} was revoked at ${t.revokedAt.toISOString()}: ask an administrator for a new one`
        : null;
    },
    subscribe(listener) {
      listeners.add(listener);
      return () => void listeners.delete(listener);
    },
    refresh,
    stop: () => ac.abort(),
  };
}
