import type { Server } from '@grpc/grpc-js';
import type { DatabaseHandle } from '../../lib/db/database.js';
import type { Identity } from '../../lib/auth/identity.js';
import { addService } from '../../lib/grpc/server.js';
import type { Logger } from '../../lib/logger.js';
import { CertificateServiceService, TokenServiceService } from '../../gen/weft/auth/v1/auth.js';
import { createCertificateHandlers } from './rpc/certificate.rpc.js';
import type { CertificateRepository } from './store/certificate.repository.js';
import { verifySecret } from './domain/token.js';
import { createTokenHandlers } from './rpc/token.rpc.js';
import { createTokenRepository, type TokenRepository } from './store/token.repository.js';

/** Checks a bearer secret: the token identity it proves, or a DomainError auth.invalid_token (UNAUTHENTICATED). */
export type TokenVerifier = (secret: string) => Promise<Identity>;

/**
 * API tokens on the control plane's database: `verify` turns a bearer secret into a `token` identity (a lookup by
 * key id on every call, no cache: a revoked or expired token fails on its next call), `repo` stores them.
 * Made before the gRPC server, which identifies callers with `verify` (lib/grpc/server.ts).
 */
export function createTokenAuthority(database: DatabaseHandle): { repo: TokenRepository; verify: TokenVerifier } {
  const repo = createTokenRepository(database.db);
  return {
    repo,
    async verify(secret) {
      const token = await verifySecret(secret, (keyId) => repo.find(keyId), new Date());
      return { kind: 'token', name: token.name, scopes: token.scopes, expiresAt: token.expiresAt };
    },
  };
}

/** Serves TokenService (create, list, revoke; administrators only, lib/auth/authorization.ts). */
export function mountTokenService(server: Server, deps: { repo: TokenRepository; logger: Logger }): void {
  addService(
    server,
    TokenServiceService,
    createTokenHandlers({ repo: deps.repo }),
    deps.logger.child({ service: 'auth' }),
  );
}

/** Serves CertificateService (record, revoke, list; administrators only): `caPem` is the CA whose certificates it records. */
export function mountCertificateService(
  server: Server,
  deps: { repo: CertificateRepository; caPem: string; logger: Logger },
): void {
  addService(
    server,
    CertificateServiceService,
    createCertificateHandlers({ repo: deps.repo, caPem: deps.caPem }),
    deps.logger.child({ service: 'auth' }),
  );
}
