import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { createClient } from '../lib/grpc/client.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { bin } from './support/processes.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/** `weft policy` as an operator types it: YAML in, verdicts out, bad files refused with the line or field to fix. */
const run = promisify(execFile);
let cp: TestControlPlane;
const dir = mkdtempSync(path.join(tmpdir(), 'weft-cli-policy-'));

before(async () => {
  cp = await startTestControlPlane();
  const policy = createClient(PolicyServiceService, cp.address, { security: cp.security });
  try {
    await policy.upsertNamespace({ name: 'shop', labels: { team: 'shop' } });
    await policy.upsertPod({
      pod: {
        namespace: 'shop',
        name: 'web',
        labels: { app: 'web' },
        node: 'n1',
        addresses: ['10.244.0.10'],
        ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
      },
    });
    await policy.upsertPod({
      pod: { namespace: 'shop', name: 'db', labels: { app: 'db' }, node: 'n2', addresses: ['10.244.1.10'], ports: [] },
    });
  } finally {
    policy.close();
  }
});
after(async () => {
  await cp?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const weft = (...args: string[]) =>
  run(bin.weft, [...args, '--server', cp.address, '--tls-dir', cp.tlsDir], { timeout: 30_000 });
async function fails(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    await weft(...args);
  } catch (err) {
    return err as { code: number; stdout: string; stderr: string };
  }
  throw new Error(`weft ${args.join(' ')} succeeded`);
}
const file = (name: string, text: string) => {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
};

test('weft policy apply -f takes multi-document YAML; explain prints the verdict and the deciding rule', async () => {
  const yaml = file(
    'policies.yaml',
    `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-from-web
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: db}
  ingress:
    - from:
        - podSelector:
            matchLabels: {app: web}
      ports:
        - port: 5432
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata:
  name: cluster-dns
spec:
  priority: 5
  subject:
    namespaces: {}
  egress:
    - name: allow-dns
      action: Allow
      to:
        - networks: [192.0.2.53/32]
      ports:
        - portNumber: {protocol: UDP, port: 53}
`,
  );
  const applied = await weft('policy', 'apply', '-f', yaml);
  assert.match(applied.stdout, /NetworkPolicy\/shop\/db-from-web applied\nAdminNetworkPolicy\/cluster-dns applied/);
  const allowed = await weft('policy', 'explain', 'shop/web', 'shop/db', '5432/tcp');
  assert.match(
    allowed.stdout,
    /^ALLOWED: shop\/web -> shop\/db 5432\/TCP\n.*\n {2}ingress of shop\/db: allowed by ingress\[0\] of NetworkPolicy shop\/db-from-web/,
  );
  const denied = await fails(['policy', 'explain', '10.244.1.10', 'shop/db', '5432']);
  assert.equal(denied.code, 3, 'a denied connection exits 3');
  assert.match(
    denied.stdout,
    /^DENIED: .*\n.*\n {2}ingress of shop\/db: denied: db-from-web selects shop\/db for ingress/,
  );
  const dns = JSON.parse((await weft('policy', 'explain', 'shop/web', '192.0.2.53', '53/udp', '--json')).stdout) as {
    egress: { tier: string; rule: string };
  };
  assert.deepEqual([dns.egress.tier, dns.egress.rule], ['admin', 'allow-dns']);
  assert.match(
    (await weft('policy', 'list')).stdout,
    /AdminNetworkPolicy +cluster-dns\nNetworkPolicy +shop\/db-from-web/,
  );
  await weft('policy', 'delete', 'NetworkPolicy', 'shop/db-from-web');
  assert.match((await weft('policy', 'explain', 'shop/web', 'shop/db', '5432/tcp')).stdout, /^ALLOWED/);
});

test('a YAML syntax error is a usage error with the line; an invalid policy fails with the field path; nothing is applied', async () => {
  const broken = await fails([
    'policy',
    'apply',
    '-f',
    file('broken.yaml', 'kind: NetworkPolicy\nmetadata:\n  name: [unclosed\n'),
  ]);
  assert.equal(broken.code, 2);
  assert.match(broken.stderr, /broken\.yaml: line \d+: /);
  const invalid = await fails([
    'policy',
    'apply',
    '-f',
    file(
      'invalid.json',
      JSON.stringify(
        [{ kind: 'NetworkPolicy', metadata: { name: 'ok-one', namespace: 'shop' }, spec: { podSelector: {} } }][0],
      ) +
        '\n---\n' +
        JSON.stringify({
          kind: 'NetworkPolicy',
          metadata: { name: 'bad', namespace: 'shop' },
          spec: { podSelector: {}, ingress: [{ ports: [{ port: 70000 }] }] },
        }),
    ),
  ]);
  assert.equal(invalid.code, 1);
  assert.match(
    invalid.stderr,
    /objects_json\[1\] \(NetworkPolicy bad\): spec\.ingress\[0\]\.ports\[0\]\.port: 70000 is not a port number/,
  );
  assert.doesNotMatch((await weft('policy', 'list')).stdout, /ok-one/, 'the valid object was not applied either');
  assert.equal((await fails(['policy', 'explain', 'shop/web', 'shop/db', 'http'])).code, 2);
});

test('weft policy pods lists the pods policy selects, of one namespace or all, as text or JSON', async () => {
  const policy = createClient(PolicyServiceService, cp.address, { security: cp.security });
  try {
    await policy.attachPod({
      namespace: 'ops',
      name: 'probe',
      node: 'n3',
      containerId: 'cli-c1',
      addresses: ['10.244.2.10'],
      resync: false,
    });
  } finally {
    policy.close();
  }
  const { stdout } = await weft('policy', 'pods');
  assert.deepEqual(
    stdout
      .trim()
      .split('\n')
      .map((l) => l.split(/\s+/).slice(0, 4).join(' ')),
    [
      'POD NODE ADDRESSES LABELS',
      'ops/probe n3 10.244.2.10 -',
      'shop/db n2 10.244.1.10 app=db',
      'shop/web n1 10.244.0.10 app=web',
    ],
  );
  assert.match(stdout, /ops\/probe .*\(undescribed: attached, no labels yet\)/);
  const shop = JSON.parse((await weft('policy', 'pods', '--namespace', 'shop', '--json')).stdout) as {
    name: string;
    described: boolean;
    ports: { name: string }[];
  }[];
  assert.deepEqual(
    shop.map((p) => [p.name, p.described, p.ports.map((x) => x.name)]),
    [
      ['db', true, []],
      ['web', true, ['http']],
    ],
  );
});
