import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { BootstrapServiceService } from '../gen/weft/auth/v1/bootstrap.js';
import { CertificateServiceService } from '../gen/weft/auth/v1/auth.js';
import { AuditServiceService } from '../gen/weft/audit/v1/audit.js';
import { eventually } from './support/eventually.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { createClient } from '../lib/grpc/client.js';
import { clientTlsDir } from '../lib/grpc/credentials.js';
import { errorCodeOf, GrpcStatus } from '../lib/grpc/status.js';
import { silentLogger } from '../lib/logger.js';
import { createClientKey } from '../lib/pki.js';
import { requestCertificate, startTlsBootstrap } from '../lib/tls-bootstrap.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';
import { kubeApiserverSkipReason, startKubeApiserver, type KubeApiserver } from './support/kube-apiserver.js';
import { skipOutsideCi } from './support/privileges.js';

/**
 * The bootstrap on a real API server (kube-apiserver 1.20.2, test/support/kube-apiserver.ts) and a real control plane:
 * pods of the agent and the controller trade projected ServiceAccount tokens (TokenRequest bound to a pod, audience
 * weft) for certificates, and the control plane reaches the API server as its own ServiceAccount with deploy/base's
 * RBAC only. No kernel: no lock needed.
 */

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const NS = 'weft-system';
const node = (name: string, last: number) => ({
  name,
  underlayAddress: `192.0.2.${last}`,
  vtepMac: `02:00:c0:00:02:${last.toString(16).padStart(2, '0')}`,
});

describe(
  "bootstrap: a pod's ServiceAccount token for a Weft certificate",
  skipOutsideCi(kubeApiserverSkipReason()),
  () => {
    let kube: KubeApiserver;
    let cp: TestControlPlane;
    let work: string;
    let caFile: string;

    const createPod = async (name: string, nodeName: string, sa: string): Promise<string> => {
      const pod = {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name, namespace: NS },
        spec: {
          nodeName,
          serviceAccountName: sa,
          automountServiceAccountToken: false,
          containers: [{ name: 'c', image: 'weft:dev' }],
        },
      };
      await kube.kubectl(['create', '-f', '-'], { input: JSON.stringify(pod) });
      return (await kube.kubectl(['get', 'pod', '-n', NS, name, '-o', 'jsonpath={.metadata.uid}'])).stdout;
    };
    const deletePod = (name: string) =>
      kube.kubectl(['delete', 'pod', '-n', NS, name, '--grace-period=0', '--force', '--wait=true']);
    /** A TokenRequest for `sa`, bound to `pod` when given, for `audience` (none: the API server's own). */
    const tokenFor = async (
      sa: string,
      opts: { pod?: { name: string; uid: string }; audience?: string | null } = {},
    ): Promise<string> => {
      const spec: Record<string, unknown> = { expirationSeconds: 3600 };
      if (opts.audience !== null) spec.audiences = [opts.audience ?? 'weft'];
      if (opts.pod) spec.boundObjectRef = { kind: 'Pod', apiVersion: 'v1', name: opts.pod.name, uid: opts.pod.uid };
      const { stdout } = await kube.kubectl(
        ['create', '--raw', `/api/v1/namespaces/${NS}/serviceaccounts/${sa}/token`, '-f', '-'],
        { input: JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec }) },
      );
      return (JSON.parse(stdout) as { status: { token: string } }).status.token;
    };
    let n = 0;
    /** A fresh TLS folder and a token file holding `token`. */
    const folderWith = (token: string) => {
      const dir = path.join(work, `p${n++}`);
      const tokenFile = `${dir}.token`;
      writeFileSync(tokenFile, token, { mode: 0o600 });
      return { tlsDir: dir, tokenFile, caFile, address: cp.bootstrapAddress!, logger: silentLogger };
    };
    /** Asks for a certificate with a raw call: the refusal's status and stable code. */
    const refusal = async (token: string, publicKeyPem?: string): Promise<string> => {
      const client = createClient(BootstrapServiceService, cp.bootstrapAddress!, { security: { mode: 'tls', caFile } });
      try {
        await client.issueCertificate(
          { serviceAccountToken: token, publicKeyPem: publicKeyPem ?? (await createClientKey()).publicKey },
          { timeoutMs: 10_000 },
        );
        return 'issued';
      } catch (err) {
        return `${(err as { code: number }).code} ${errorCodeOf(err)}: ${(err as Error).message}`;
      } finally {
        client.close();
      }
    };
    const sanOf = (dir: string) => new X509Certificate(readFileSync(path.join(dir, 'tls.crt'))).subjectAltName;

    before(async () => {
      work = mkdtempSync(path.join(tmpdir(), 'weft-bootstrap-'));
      kube = await startKubeApiserver();
      // deploy/base's namespace, ServiceAccounts and RBAC, as applied for real; and a ServiceAccount Weft does not know.
      await kube.kubectl([
        'apply',
        '-f',
        path.join(root, 'deploy/base/namespace.yaml'),
        '-f',
        path.join(root, 'deploy/base/rbac.yaml'),
      ]);
      await kube.kubectl(['create', 'serviceaccount', '-n', NS, 'someone-else']);
      // The control plane talks to the API server as weft-control-plane: a token for the API server's audience.
      const cpToken = await tokenFor('weft-control-plane', { audience: null });
      const admin = JSON.parse(readFileSync(kube.kubeconfig, 'utf8')) as {
        clusters: { cluster: { 'certificate-authority': string } }[];
      };
      const kubeconfig = path.join(work, 'control-plane.kubeconfig');
      writeFileSync(
        kubeconfig,
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Config',
          'current-context': 'cp',
          clusters: [
            {
              name: 'k',
              cluster: {
                server: kube.server,
                'certificate-authority': admin.clusters[0]!.cluster['certificate-authority'],
              },
            },
          ],
          users: [{ name: 'cp', user: { token: cpToken } }],
          contexts: [{ name: 'cp', context: { cluster: 'k', user: 'cp' } }],
        }),
        { mode: 0o600 },
      );
      cp = await startTestControlPlane({
        settings: {
          bootstrapListen: '127.0.0.1:0',
          kubeconfig,
          bootstrapCluster: 'east',
          bootstrapCertificateTtlS: '3600',
        },
      });
      caFile = path.join(cp.pki.pkiDir, 'ca.crt');
    });
    after(async () => {
      await cp?.stop();
      await kube?.stop();
      rmSync(work, { recursive: true, force: true });
    });

    test('an agent token bound to a pod on node1 gets weft:node:node1; the control plane takes it as node1, not node2', async () => {
      const uid = await createPod('agent-a', 'node1', 'weft-agent');
      const o = folderWith(await tokenFor('weft-agent', { pod: { name: 'agent-a', uid } }));
      const got = await requestCertificate({ ...o, expectIdentity: 'node:node1' });
      assert.equal(got.identity, 'node:node1');
      assert.equal(sanOf(o.tlsDir), 'URI:weft:node:node1');
      const c = new X509Certificate(readFileSync(path.join(o.tlsDir, 'tls.crt')));
      const hours = (Date.parse(c.validTo) - Date.now()) / 3_600_000;
      assert.ok(hours > 0.9 && hours <= 1, `valid for WEFT_BOOTSTRAP_CERT_TTL_S (1 h here), not ${hours} h`);
      assert.ok(c.checkIssued(new X509Certificate(readFileSync(caFile))), "signed by Weft's CA");

      const routes = createClient(RoutesServiceService, cp.address, { security: clientTlsDir(o.tlsDir) });
      try {
        assert.ok((await routes.registerNode(node('node1', 11), { timeoutMs: 10_000 })).leaseMillis > 0);
        await assert.rejects(
          routes.registerNode(node('node2', 12), { timeoutMs: 10_000 }),
          (err: Error & { code: number }) => {
            assert.equal(err.code, GrpcStatus.PERMISSION_DENIED);
            assert.match(err.message, /node node1 may only register itself/);
            return true;
          },
        );
      } finally {
        routes.close();
      }
      // Issued certificates are recorded (revoking node1 finds this one) and audited.
      const serial = c.serialNumber.toLowerCase().replace(/^0+/, '');
      const certificates = createClient(CertificateServiceService, cp.address, { security: cp.security });
      const audit = createClient(AuditServiceService, cp.address, { security: cp.security });
      try {
        const recorded = (
          await certificates.listCertificates({ identity: 'node:node1' }, { timeoutMs: 10_000 })
        ).certificates.find((x) => x.serial === serial);
        assert.equal(recorded?.issuedBy, 'bootstrap');
        const events = await eventually(
          'the issue in the audit log',
          async () => {
            const e = (
              await audit.listAuditEvents({ resource: `certificate/node:node1/${serial}` }, { timeoutMs: 10_000 })
            ).events;
            return e.length > 0 ? e : undefined;
          },
          5000,
        );
        assert.deepEqual(
          events.map((e) => [e.method, e.actor, e.result]),
          [['/weft.auth.v1.BootstrapService/IssueCertificate', 'none', 'OK']],
        );
      } finally {
        certificates.close();
        audit.close();
      }
    });

    test("the controller's token gets weft:controller:<WEFT_BOOTSTRAP_CLUSTER>, which acts as that controller", async () => {
      const uid = await createPod('controller-a', 'cp1', 'weft-kube-controller');
      const o = folderWith(await tokenFor('weft-kube-controller', { pod: { name: 'controller-a', uid } }));
      assert.equal((await requestCertificate(o)).identity, 'controller:east');
      assert.equal(sanOf(o.tlsDir), 'URI:weft:controller:east');
      const routes = createClient(RoutesServiceService, cp.address, { security: clientTlsDir(o.tlsDir) });
      try {
        await routes.listNodes({}, { timeoutMs: 10_000 });
        await assert.rejects(
          routes.registerNode(node('node1', 11), { timeoutMs: 10_000 }),
          /controller east may not call/,
        );
      } finally {
        routes.close();
      }
      // A controller expecting another cluster name stops with what to fix, instead of acting under the wrong one.
      await assert.rejects(requestCertificate({ ...o, expectIdentity: 'controller:west' }), /WEFT_K8S_CLUSTER/);
    });

    test("refused: another ServiceAccount, another audience, the API server's audience, not a token, no pod binding", async () => {
      const uid = await createPod('other-a', 'node1', 'someone-else');
      assert.match(
        await refusal(await tokenFor('someone-else', { pod: { name: 'other-a', uid } })),
        new RegExp(
          `^${GrpcStatus.PERMISSION_DENIED} bootstrap.wrong_service_account: .*system:serviceaccount:weft-system:someone-else`,
        ),
      );
      const agentUid = await createPod('agent-b', 'node1', 'weft-agent');
      const pod = { name: 'agent-b', uid: agentUid };
      assert.match(
        await refusal(await tokenFor('weft-agent', { pod, audience: 'not-weft' })),
        new RegExp(`^${GrpcStatus.UNAUTHENTICATED} bootstrap.token_rejected`),
      );
      assert.match(
        await refusal(await tokenFor('weft-agent', { pod, audience: null })),
        new RegExp(`^${GrpcStatus.UNAUTHENTICATED} bootstrap.token_rejected`),
      );
      assert.match(await refusal('not-a-token'), new RegExp(`^${GrpcStatus.UNAUTHENTICATED} bootstrap.token_rejected`));
      assert.match(await refusal(''), new RegExp(`^${GrpcStatus.INVALID_ARGUMENT} bootstrap.no_token`));
      assert.match(
        await refusal(await tokenFor('weft-agent')),
        new RegExp(`^${GrpcStatus.PERMISSION_DENIED} bootstrap.not_pod_bound`),
      );
      // The same token is good with a good key: the refusals above are the token's.
      assert.equal(await refusal(await tokenFor('weft-agent', { pod })), 'issued');
      assert.match(
        await refusal(
          await tokenFor('weft-agent', { pod }),
          '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n',
        ),
        new RegExp(`^${GrpcStatus.INVALID_ARGUMENT} bootstrap.bad_public_key`),
      );
    });

    test('refused: a token whose pod was deleted, or replaced by another pod of the same name', async () => {
      const uid = await createPod('agent-c', 'node1', 'weft-agent');
      const token = await tokenFor('weft-agent', { pod: { name: 'agent-c', uid } });
      assert.equal(await refusal(token), 'issued');
      await deletePod('agent-c');
      const gone = await refusal(token);
      assert.match(
        gone,
        new RegExp(
          `^(${GrpcStatus.UNAUTHENTICATED} bootstrap.token_rejected|${GrpcStatus.PERMISSION_DENIED} bootstrap.pod_gone)`,
        ),
      );
      const newUid = await createPod('agent-c', 'node2', 'weft-agent');
      assert.notEqual(newUid, uid);
      const replaced = await refusal(token);
      assert.match(
        replaced,
        new RegExp(
          `^(${GrpcStatus.UNAUTHENTICATED} bootstrap.token_rejected|${GrpcStatus.PERMISSION_DENIED} bootstrap.pod_gone)`,
        ),
      );
      console.log(`deleted pod: ${gone}\nreplaced pod: ${replaced}`);
    });

    test('the bootstrap listener serves nothing else, and asks for no client certificate', async () => {
      const ipam = createClient(IpamServiceService, cp.bootstrapAddress!, { security: { mode: 'tls', caFile } });
      try {
        await assert.rejects(
          ipam.listPools({}, { timeoutMs: 10_000 }),
          (err: { code: number }) => err.code === GrpcStatus.UNIMPLEMENTED,
        );
      } finally {
        ipam.close();
      }
      // And a client that trusts another CA does not talk to it at all.
      const other = path.join(work, 'other-ca.crt');
      writeFileSync(other, readFileSync(path.join(cp.pki.adminTlsDir, 'tls.crt')));
      const client = createClient(BootstrapServiceService, cp.bootstrapAddress!, {
        security: { mode: 'tls', caFile: other },
      });
      try {
        await assert.rejects(
          client.issueCertificate({ serviceAccountToken: 'x', publicKeyPem: '' }, { timeoutMs: 5000 }),
          (err: { code: number }) => err.code === GrpcStatus.UNAVAILABLE,
        );
      } finally {
        client.close();
      }
    });

    test('startTlsBootstrap fills an empty folder and renews the certificate for the same key; clients keep working', async () => {
      const uid = await createPod('agent-d', 'node3', 'weft-agent');
      const o = folderWith(await tokenFor('weft-agent', { pod: { name: 'agent-d', uid } }));
      const ac = new AbortController();
      const boot = await startTlsBootstrap({ ...o, expectIdentity: 'node:node3', signal: ac.signal });
      try {
        const first = new X509Certificate(readFileSync(path.join(o.tlsDir, 'tls.crt')));
        const key = readFileSync(path.join(o.tlsDir, 'tls.key'), 'utf8');
        const routes = createClient(RoutesServiceService, cp.address, { security: clientTlsDir(o.tlsDir, 50) });
        try {
          await routes.registerNode(node('node3', 13), { timeoutMs: 10_000 });
          // The kubelet rotates the token; the renewal sends the new one.
          writeFileSync(o.tokenFile, await tokenFor('weft-agent', { pod: { name: 'agent-d', uid } }));
          await boot.renewNow();
          const second = new X509Certificate(readFileSync(path.join(o.tlsDir, 'tls.crt')));
          assert.notEqual(second.serialNumber, first.serialNumber, 'a new certificate');
          assert.equal(readFileSync(path.join(o.tlsDir, 'tls.key'), 'utf8'), key, 'for the same key');
          assert.equal(second.subjectAltName, 'URI:weft:node:node3');
          await new Promise((r) => setTimeout(r, 200));
          await routes.renewLease({ name: 'node3' }, { timeoutMs: 10_000 });
        } finally {
          routes.close();
        }
      } finally {
        boot.stop();
        ac.abort();
      }
    });
  },
);
