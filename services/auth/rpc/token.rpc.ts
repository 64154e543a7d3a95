import type { Handlers } from '../../../lib/grpc/server.js';
import { describeIdentity } from '../../../lib/auth/identity.js';
import type { Token as TokenMessage, TokenServiceService } from '../../../gen/weft/auth/v1/auth.js';
import { makeSecret, validateExpiry, validateScopes, validateTokenName, type Token } from '../domain/token.js';
import type { TokenRepository } from '../store/token.repository.js';

const toMessage = (t: Token): TokenMessage => ({
  name: t.name,
  scopes: t.scopes,
  createTime: t.createdAt,
  expireTime: t.expiresAt ?? undefined,
  revokeTime: t.revokedAt ?? undefined,
  createdBy: t.createdBy,
  keyId: t.keyId,
});

/** The gRPC adapter of TokenService: validation in the domain, rows in the store; the secret leaves only in CreateToken's answer. */
export function createTokenHandlers(deps: {
  repo: TokenRepository;
  now?: () => Date;
}): Handlers<typeof TokenServiceService> {
  const now = deps.now ?? (() => new Date());
  return {
    async createToken(req, ctx) {
      const name = validateTokenName(req.name);
      const scopes = validateScopes(req.scopes);
      const expiresIn = validateExpiry(req.expiresInSeconds);
      const { keyId, secret, secretHash } = makeSecret();
      const createdAt = now();
      const token = await deps.repo.create({
        keyId,
        name,
        scopes,
        secretHash,
        createdAt,
        expiresAt: expiresIn > 0 ? new Date(createdAt.getTime() + expiresIn * 1000) : null,
        revokedAt: null,
        createdBy: describeIdentity(ctx.identity),
      });
      return { token: toMessage(token), secret };
    },
    async listTokens() {
      return { tokens: (await deps.repo.list()).map(toMessage) };
    },
    async revokeToken(req) {
      return { token: toMessage(await deps.repo.revoke(req.name, now())) };
    },
  };
}
