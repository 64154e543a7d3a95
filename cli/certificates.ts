import { readFile } from 'node:fs/promises';
import { createClient } from '../lib/grpc/client.js';
import type { TransportSecurity } from '../lib/grpc/credentials.js';
import { CertificateServiceService, type Certificate } from '../gen/weft/auth/v1/auth.js';

/**
 * `weft ca revoke` and the recording half of `weft ca issue` (cli/commands/ca.ts): each a function of its parsed
 * flags and the control plane to call, handing its result to `print` (the command's output format); usage errors come
 * back through `usage` (exit status 2).
 */
export interface ControlPlaneCall {
  server: string;
  security: TransportSecurity;
  token?: string;
}

const show = (c: Certificate) => ({
  serial: c.serial,
  identity: c.identity,
  issueTime: c.issueTime?.toISOString() ?? null,
  notAfter: c.notAfter?.toISOString() ?? null,
  issuedBy: c.issuedBy,
  revokeTime: c.revokeTime?.toISOString() ?? null,
  revokeReason: c.revokeReason,
});

export const CA_REVOKE_USAGE =
  'usage: weft ca revoke (--serial HEX | --cert FILE | --node NAME | --admin NAME | --controller CLUSTER) [--reason TEXT]';

/**
 * `weft ca revoke`: one certificate (by serial or file) or every recorded certificate of an identity issued until
 * now. Calls presenting them fail within seconds, and their open streams end. Exit 0 when something is revoked now or
 * was already.
 */
export async function caRevoke(
  o: { serial?: string; cert?: string; node?: string; admin?: string; controller?: string; reason?: string },
  cp: () => ControlPlaneCall,
  print: (value: unknown, text: string) => void,
  usage: (message: string) => Error,
): Promise<number> {
  const kinds = (['node', 'admin', 'controller'] as const).filter((k) => o[k] !== undefined);
  const named = [o.serial !== undefined, o.cert !== undefined, kinds.length > 0].filter(Boolean).length;
  if (named !== 1 || kinds.length > 1) throw usage(`${CA_REVOKE_USAGE}: name exactly one certificate or identity`);
  let certificatePem = '';
  if (o.cert !== undefined) {
    try {
      certificatePem = await readFile(o.cert, 'utf8');
    } catch (err) {
      throw usage(
        `cannot read the certificate ${o.cert}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      );
    }
  }
  const kind = kinds[0];
  const target = cp();
  const client = createClient(CertificateServiceService, target.server, {
    security: target.security,
    token: target.token,
  });
  try {
    const r = await client.revokeCertificates(
      { serial: o.serial ?? '', certificatePem, identity: kind ? `${kind}:${o[kind]}` : '', reason: o.reason ?? '' },
      { timeoutMs: 10_000 },
    );
    const what = kind ? `${kind}:${o[kind]}` : (o.serial ?? o.cert);
    print(
      { revoked: r.revoked.map(show), alreadyRevoked: r.alreadyRevoked },
      [
        ...r.revoked.map(
          (c) =>
            `revoked ${c.serial}${c.identity ? ` (${c.identity}${c.notAfter ? `, valid until ${c.notAfter.toISOString()}` : ''})` : ''}`,
        ),
        r.revoked.length === 0
          ? `${what}: already revoked`
          : r.alreadyRevoked > 0
            ? `(${r.alreadyRevoked} already revoked)`
            : '',
        r.revoked.length > 0
          ? 'calls presenting it are refused within seconds and its open streams end; issue a new certificate where it is still needed'
          : '',
      ]
        .filter(Boolean)
        .join('\n'),
    );
    return 0;
  } finally {
    client.close();
  }
}

/**
 * Records a certificate `weft ca issue` made, so that revoking its identity finds it. A control plane that cannot be
 * reached (a CA folder used away from it) or refuses leaves it unrecorded: said on stderr with what that means, and
 * answered as `false`; the certificate files are kept either way.
 */
export async function recordIssued(
  certificatePem: string,
  serial: string,
  cp: () => ControlPlaneCall,
  warn: (text: string) => void,
): Promise<boolean> {
  let target: ControlPlaneCall;
  try {
    target = cp();
  } catch (err) {
    warn(`the certificate (serial ${serial}) is not recorded: ${(err as Error).message}\n${UNRECORDED(serial)}`);
    return false;
  }
  const client = createClient(CertificateServiceService, target.server, {
    security: target.security,
    token: target.token,
  });
  try {
    await client.recordCertificate({ certificatePem }, { timeoutMs: 10_000 });
    return true;
  } catch (err) {
    const e = err as { details?: string; message: string };
    warn(
      `the certificate (serial ${serial}) is not recorded: the control plane at ${target.server} answered: ${e.details || e.message}\n${UNRECORDED(serial)}`,
    );
    return false;
  } finally {
    client.close();
  }
}

const UNRECORDED = (serial: string) =>
  `  \`weft ca revoke --node/--admin/--controller\` will not find it (run weft ca issue where it reaches the control plane: --server, --tls-dir);\n` +
  `  it can still be revoked on its own: weft ca revoke --serial ${serial}`;
