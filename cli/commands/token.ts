import { TokenServiceService, type Token } from '../../gen/weft/auth/v1/auth.js';
import { CONNECTION_FLAGS, OUTPUT_FLAGS, type CommandGroup } from '../core/command.js';
import { durationSeconds, iso } from '../core/values.js';

/** `weft token create|list|revoke`: API tokens for external systems (lib/auth/DESIGN.md). */
const common = { ...CONNECTION_FLAGS, ...OUTPUT_FLAGS };
const show = (t: Token) => ({
  name: t.name,
  scopes: t.scopes,
  keyId: t.keyId,
  createTime: iso(t.createTime),
  expireTime: t.expireTime?.toISOString() ?? null,
  revokeTime: t.revokeTime?.toISOString() ?? null,
  createdBy: t.createdBy,
});
/** A token's state by name: revoked, expired, until a time, or no expiry. */
const state = (t: Token) =>
  t.revokeTime
    ? `revoked ${iso(t.revokeTime)}`
    : t.expireTime && t.expireTime <= new Date()
      ? `expired ${iso(t.expireTime)}`
      : t.expireTime
        ? `until ${iso(t.expireTime)}`
        : 'no expiry';

export const tokenCommands: CommandGroup = {
  name: 'token',
  summary: 'API tokens for external systems',
  commands: [
    {
      path: ['token', 'create'],
      args: [{ name: 'NAME' }],
      summary: 'make an API token and print its secret (once, alone on the first line)',
      flags: {
        scope: {
          type: 'string',
          multiple: true,
          value: 'S',
          required: true,
          description: 'read, admin, ipam:allocate:POOL or ipam:release:POOL',
        },
        'expires-in': { type: 'string', value: 'DURATION', description: '3600, 90s, 30m, 12h, 30d (default: never)' },
        ...common,
      },
      async run(ctx) {
        const expiresIn = ctx.str('expires-in');
        const expiresInSeconds = expiresIn === undefined ? 0 : durationSeconds('--expires-in', expiresIn);
        const r = await ctx
          .client(TokenServiceService)
          .createToken({ name: ctx.args[0]!, scopes: ctx.list('scope'), expiresInSeconds }, { timeoutMs: 10_000 });
        ctx.out.value(
          { ...show(r.token!), secret: r.secret },
          () =>
            `${r.secret}\n(token ${r.token!.name}: ${r.token!.scopes.join(', ')}; ${state(r.token!)}. This secret is shown once: send it as "authorization: Bearer <secret>", or WEFT_TOKEN / --token for weft)`,
        );
        return 0;
      },
    },
    {
      path: ['token', 'list'],
      summary: 'tokens, their scopes, expiry and revocation (never a secret)',
      flags: common,
      async run(ctx) {
        const list = (await ctx.client(TokenServiceService).listTokens({}, { timeoutMs: 10_000 })).tokens;
        ctx.out.table(
          list,
          [
            { header: 'NAME', value: (t: Token) => t.name },
            { header: 'KEY ID', value: (t) => t.keyId },
            { header: 'STATE', value: (t) => state(t) },
            { header: 'SCOPES', value: (t) => t.scopes.join(',') },
            { header: 'CREATED', value: (t) => iso(t.createTime), wide: true },
            { header: 'BY', value: (t) => t.createdBy, wide: true },
          ],
          { value: list.map(show), empty: 'no tokens' },
        );
        return 0;
      },
    },
    {
      path: ['token', 'revoke'],
      args: [{ name: 'NAME' }],
      summary: 'revoke a token: its next call is refused',
      flags: common,
      async run(ctx) {
        const r = await ctx.client(TokenServiceService).revokeToken({ name: ctx.args[0]! }, { timeoutMs: 10_000 });
        ctx.out.value(show(r.token!), () => `revoked token ${r.token!.name} (${r.token!.keyId})`);
        return 0;
      },
    },
  ],
};
