import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describeCertificate, initCa, issueClientTlsDir } from '../../lib/pki.js';
import { OUTPUT_FLAGS, STATE_DIR_FLAG, UsageError, type CommandGroup } from '../core/command.js';

/** `weft ca init|issue`: Weft's CA and the client certificates it signs (lib/pki.ts). */
const dataDir = {
  'data-dir': {
    type: 'string',
    value: 'DIR',
    shared: true,
    description:
      "weft up's data folder, whose pki/ holds the CA (default: $WEFT_PKI_DIR, else $WEFT_DATA_DIR/pki or .weft/pki)",
  },
} as const;

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
      details: "The identity is the certificate's SAN URI weft:<kind>:<name>.",
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
        ...dataDir,
        ...STATE_DIR_FLAG,
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
        const c = describeCertificate(readFileSync(path.join(out, 'tls.crt'), 'utf8'));
        const r = {
          out,
          identity: `weft:${kind}:${name}`,
          notAfter: c.validTo.toISOString(),
          serialNumber: c.serialNumber,
          files: ['ca.crt', 'tls.crt', 'tls.key'],
        };
        ctx.out.value(
          r,
          () =>
            `${out}: ca.crt, tls.crt, tls.key for ${r.identity}, valid until ${r.notAfter} (use it as WEFT_TLS_DIR or --tls-dir)`,
        );
        return 0;
      },
    },
  ],
};
