import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describeCertificate, initCa, issueClientTlsDir } from '../../lib/pki.js';
import { caRevoke, recordIssued, type ControlPlaneCall } from '../certificates.js';
import { CONNECTION_FLAGS, OUTPUT_FLAGS, UsageError, type CommandGroup, type Context } from '../core/command.js';

/**
 * `weft ca init|issue|revoke`: Weft's CA, the client certificates it signs (lib/pki.ts), and their revocation
 * (cli/certificates.ts, services/auth/DESIGN.md).
 */
const connection = {
  ...CONNECTION_FLAGS,
  'data-dir': {
    type: 'string',
    value: 'DIR',
    shared: true,
    description:
      "weft up's data folder: pki/ holds the CA (default: $WEFT_PKI_DIR, else $WEFT_DATA_DIR/pki or .weft/pki), weft.sock its control plane",
  },
} as const;

/**
 * The control plane that records and revokes certificates: --server, $WEFT_SERVER, else the one whose data dir holds
 * the CA (its unix socket), else the local cluster's, else 127.0.0.1:7400.
 */
function controlPlane(ctx: Context): ControlPlaneCall {
  const c = ctx.connection();
  const localSocket = path.resolve(ctx.str('data-dir') ?? process.env.WEFT_DATA_DIR ?? '.weft', 'weft.sock');
  const server =
    ctx.str('server') ?? process.env.WEFT_SERVER ?? (existsSync(localSocket) ? `unix://${localSocket}` : c.server);
  return { server, security: c.security, token: c.token };
}

export const caCommands: CommandGroup = {
  name: 'ca',
  summary: "Weft's certificate authority and the client certificates it issues",
  commands: [
    {
      path: ['ca', 'init'],
      summary: 'make a CA (ca.crt, ca.key 0600) for the Secret weft-ca on Kubernetes; one already there is kept',
      flags: {
        out: { type: 'string', value: 'DIR', required: true, description: 'the folder to write ca.crt and ca.key to' },
        ...OUTPUT_FLAGS,
      },
      async run(ctx) {
        const out = path.resolve(ctx.str('out')!);
        const r = await initCa(out);
        const c = describeCertificate(r.cert);
        ctx.out.value(
          { out, created: r.created, notAfter: c.validTo.toISOString() },
          () =>
            `${out}: ca.crt, ca.key ${r.created ? 'made' : 'already there, kept'} (valid until ${c.validTo.toISOString()}); on Kubernetes: kubectl -n weft-system create secret generic weft-ca --from-file=${out}/ca.crt --from-file=${out}/ca.key && kubectl -n weft-system create configmap weft-ca-bundle --from-file=${out}/ca.crt`,
        );
        return 0;
      },
    },
    {
      path: ['ca', 'issue'],
      synopsis:
        '(--node NAME | --admin NAME | --controller CLUSTER) --out DIR [--days N] [--data-dir DIR] [-o json|yaml]',
      summary:
        "issue a client certificate from weft up's CA: DIR gets ca.crt, tls.crt, tls.key (0600), for WEFT_TLS_DIR",
      details:
        "The identity is the certificate's SAN URI weft:<kind>:<name>. The control plane records it, so that revoking the " +
        'identity finds it; one it cannot reach leaves it unrecorded, said on stderr (exit 0: the files are good).',
      flags: {
        node: { type: 'string', value: 'NAME', description: "a node agent's certificate (weft:node:NAME)" },
        admin: { type: 'string', value: 'NAME', description: "an administrator's (weft:admin:NAME)" },
        controller: { type: 'string', value: 'CLUSTER', description: "a kube-controller's (weft:controller:CLUSTER)" },
        out: {
          type: 'string',
          value: 'DIR',
          required: true,
          description: 'the folder to write ca.crt, tls.crt and tls.key to',
        },
        days: { type: 'string', value: 'N', description: 'valid this many days (default 365)' },
        ...connection,
        ...OUTPUT_FLAGS,
      },
      async run(ctx) {
        const chosen = (['node', 'admin', 'controller'] as const).filter((k) => ctx.str(k) !== undefined);
        if (chosen.length !== 1) throw ctx.usage('name exactly one identity');
        const kind = chosen[0]!;
        const name = ctx.str(kind)!;
        const daysFlag = ctx.str('days');
        const days = daysFlag === undefined ? undefined : Number(daysFlag);
        if (days !== undefined && (!Number.isInteger(days) || days < 1 || days > 36_500))
          throw new UsageError('--days must be a whole number of days, 1-36500');
        const pki = path.resolve(
          process.env.WEFT_PKI_DIR || path.join(ctx.str('data-dir') ?? process.env.WEFT_DATA_DIR ?? '.weft', 'pki'),
        );
        const out = path.resolve(ctx.str('out')!);
        try {
          await issueClientTlsDir(pki, out, { kind, name }, days);
        } catch (err) {
          if (/letters, digits/.test((err as Error).message)) throw new UsageError((err as Error).message);
          throw err;
        }
        const pem = readFileSync(path.join(out, 'tls.crt'), 'utf8');
        const c = describeCertificate(pem);
        const recorded = await recordIssued(pem, c.serialNumber, () => controlPlane(ctx), ctx.warn);
        const r = {
          out,
          identity: `weft:${kind}:${name}`,
          notAfter: c.validTo.toISOString(),
          serialNumber: c.serialNumber,
          files: ['ca.crt', 'tls.crt', 'tls.key'],
          recorded,
        };
        ctx.out.value(
          r,
          () =>
            `${out}: ca.crt, tls.crt, tls.key for ${r.identity}, valid until ${r.notAfter} (use it as WEFT_TLS_DIR or --tls-dir)${recorded ? '; recorded by the control plane' : ''}`,
        );
        return 0;
      },
    },
    {
      path: ['ca', 'revoke'],
      synopsis:
        '(--serial HEX | --cert FILE | --node NAME | --admin NAME | --controller CLUSTER) [--reason TEXT] [-o json|yaml]',
      summary:
        'revoke one certificate, or every one issued to an identity until now: calls with it are refused within seconds and its open streams end',
      details: 'Exit 0 when something is revoked now or was already.',
      flags: {
        serial: { type: 'string', value: 'HEX', description: 'the certificate with this serial number' },
        cert: { type: 'string', value: 'FILE', description: 'the certificate in this PEM file' },
        node: { type: 'string', value: 'NAME', description: 'every recorded certificate of weft:node:NAME' },
        admin: { type: 'string', value: 'NAME', description: 'every recorded certificate of weft:admin:NAME' },
        controller: {
          type: 'string',
          value: 'CLUSTER',
          description: 'every recorded certificate of weft:controller:CLUSTER',
        },
        reason: { type: 'string', value: 'TEXT', description: 'why (kept with the revocation and in the audit log)' },
        ...connection,
        ...OUTPUT_FLAGS,
      },
      run: (ctx) =>
        caRevoke(
          {
            serial: ctx.str('serial'),
            cert: ctx.str('cert'),
            node: ctx.str('node'),
            admin: ctx.str('admin'),
            controller: ctx.str('controller'),
            reason: ctx.str('reason'),
          },
          () => controlPlane(ctx),
          (value, text) => ctx.out.value(value, () => text),
          (m) => ctx.usage(m),
        ),
    },
  ],
};
