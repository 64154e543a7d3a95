import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DomainError } from '../../../lib/errors.js';
import { parseAddress } from '../../../lib/net/ip.js';
import type { PolicyRepository } from '../store/policy.repository.js';
import { createPolicyHandlers } from './policy.rpc.js';

/**
 * Property tests of the policy service's request validation, through its handlers with a fake repository that
 * records what reaches it (the store itself is tested against PostgreSQL elsewhere). Any request either reaches the
 * store with checked values or is refused with a DomainError of kind invalid_argument (INVALID_ARGUMENT; Explain's
 * pods that do not exist: not_found), never another error (INTERNAL).
 */
const RUNS = { numRuns: 300, interruptAfterTimeLimit: 1500, includeErrorInReport: true };

function fakeRepo() {
  const calls: { method: string; args: unknown[] }[] = [];
  const defaults: Record<string, unknown> = {
    snapshot: { revision: 1, namespaces: new Map([['x', {}]]), pods: [], policies: [] },
    listPolicies: [],
    listNamespaces: [],
    listPods: [],
  };
  const repo = new Proxy(
    {},
    {
      get:
        (_t, method: string) =>
        async (...args: unknown[]) => {
          calls.push({ method, args });
          return defaults[method] ?? 1;
        },
    },
  ) as PolicyRepository;
  return { repo, calls };
}

const handlersWith = (repo: PolicyRepository) =>
  createPolicyHandlers({ repo, notifier: {} as never, watch: {} as never });
const ctx = { signal: new AbortController().signal } as never;

/** Awaits the call: a result, or a DomainError of an allowed kind (the message must say something). */
async function answersOrRefuses(
  call: () => Promise<unknown>,
  kinds: readonly string[] = ['invalid_argument'],
): Promise<boolean> {
  try {
    await call();
    return true;
  } catch (err) {
    if (!(err instanceof DomainError))
      throw new Error(`threw ${String(err)} instead of a DomainError (INTERNAL to the caller)`, { cause: err });
    assert.ok(kinds.includes(err.kind), `kind ${err.kind}: ${err.message}`);
    assert.ok(err.message.length > 0);
    return false;
  }
}

const dns = fc.oneof(
  { arbitrary: fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?$/), weight: 4 },
  fc.string({ maxLength: 12 }),
  fc.constantFrom('', 'A', 'a_b', 'a\n', '-a', 'a'.repeat(254)),
);
const nameOk = (s: string) => /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/.test(s);

test('ApplyPolicies: any objects_json reach the store as checked policies or are INVALID_ARGUMENT', async () => {
  const policyText = fc.oneof(
    fc
      .record(
        {
          kind: fc.constantFrom('NetworkPolicy', 'AdminNetworkPolicy', 'BaselineAdminNetworkPolicy', 'List'),
          metadata: fc.record({ name: dns, namespace: dns }, { requiredKeys: [] }),
          spec: fc.jsonValue({ maxDepth: 3 }),
        },
        { requiredKeys: [] },
      )
      .map((o) => JSON.stringify(o)),
    fc.constant('{"kind":"NetworkPolicy","metadata":{"name":"web"},"spec":{"podSelector":{}}}'),
    fc.constant(
      '{"kind":"BaselineAdminNetworkPolicy","metadata":{"name":"default"},"spec":{"subject":{"namespaces":{}}}}',
    ),
    // Values whose printing fails: an object whose toString is not a function, a list too deep for JSON.stringify.
    fc.constantFrom(
      '{"kind":{"toString":1},"metadata":{"name":"x"}}',
      '{"kind":{"toString":1,"valueOf":1},"metadata":{"name":"x"},"spec":{}}',
    ),
    fc
      .integer({ min: 3000, max: 20000 })
      .map((d) => `{"kind":${'['.repeat(d)}${']'.repeat(d)},"metadata":{"name":"x"}}`),
    fc.json(),
    fc.string({ maxLength: 30 }),
  );
  let applied = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.array(policyText, { maxLength: 3 }),
      fc.oneof(fc.constant(''), dns),
      async (objectsJson, defaultNamespace) => {
        const { repo, calls } = fakeRepo();
        const ok = await answersOrRefuses(() =>
          handlersWith(repo).applyPolicies({ objectsJson, defaultNamespace }, ctx),
        );
        const stored = calls.filter((c) => c.method === 'applyPolicies');
        assert.equal(stored.length, ok ? 1 : 0, 'a refused request wrote nothing');
        if (!ok) return;
        applied++;
        for (const it of stored[0]!.args[0] as { kind: string; namespace: string; name: string }[]) {
          assert.ok(['NetworkPolicy', 'AdminNetworkPolicy', 'BaselineAdminNetworkPolicy'].includes(it.kind));
          assert.ok(nameOk(it.name), `name ${JSON.stringify(it.name)}`);
          assert.ok(it.kind === 'NetworkPolicy' ? nameOk(it.namespace) : it.namespace === '');
        }
      },
    ),
    RUNS,
  );
  assert.ok(applied > 0, `only ${applied} requests applied`);
});

test('UpsertPod, AttachPod, namespaces: a stored pod has DNS names, Kubernetes labels, IP addresses and valid named ports', async () => {
  const labels = fc.dictionary(
    fc.oneof(fc.constantFrom('app', 'example.com/tier'), fc.string({ maxLength: 8 })),
    fc.oneof(fc.constantFrom('web', ''), fc.string({ maxLength: 8 })),
    { maxKeys: 2 },
  );
  const address = fc.oneof(
    fc.ipV4(),
    fc.ipV6(),
    fc.string({ maxLength: 10 }),
    fc.constantFrom('10.0.0.1/32', 'fe80::1%eth0'),
  );
  const port = fc.record({
    name: fc.oneof(fc.constantFrom('http', 'dns', 'a--b', '80', ''), fc.string({ maxLength: 16 })),
    port: fc.oneof(fc.integer({ min: 0, max: 70000 })),
    protocol: fc.oneof(fc.constantFrom('', 'TCP', 'udp', 'sctp', 'ICMP'), fc.string({ maxLength: 5 })),
  });
  const pod = fc.record({
    namespace: dns,
    name: dns,
    labels,
    node: dns,
    addresses: fc.array(address, { maxLength: 2 }),
    ports: fc.array(port, { maxLength: 2 }),
  });
  await fc.assert(
    fc.asyncProperty(fc.option(pod), fc.boolean(), async (p, keepAttachment) => {
      const { repo, calls } = fakeRepo();
      const h = handlersWith(repo);
      if (!(await answersOrRefuses(() => h.upsertPod({ pod: p ?? undefined, keepAttachment }, ctx)))) return;
      const stored = calls.find((c) => c.method === 'upsertPod' || c.method === 'describePod')!.args[0] as {
        namespace: string;
        name: string;
        labels: Record<string, string>;
        addresses?: string[];
        ports: { name: string; port: number; protocol: string }[];
      };
      assert.ok(nameOk(stored.namespace) && nameOk(stored.name));
      for (const [k, v] of Object.entries(stored.labels))
        assert.match(`${k}=${v}`, /^([a-z0-9.-]+\/)?[A-Za-z0-9][-A-Za-z0-9_.]*=[-A-Za-z0-9_.]*$/);
      for (const a of stored.addresses ?? []) parseAddress(a);
      for (const x of stored.ports) {
        assert.ok(Number.isInteger(x.port) && x.port >= 1 && x.port <= 65535);
        assert.ok(['TCP', 'UDP', 'SCTP'].includes(x.protocol));
        assert.match(x.name, /^[a-z0-9-]{1,15}$/);
      }
    }),
    RUNS,
  );
  await fc.assert(
    fc.asyncProperty(
      dns,
      dns,
      dns,
      fc.string({ maxLength: 10 }),
      fc.array(address, { maxLength: 2 }),
      fc.boolean(),
      async (namespace, name, node, containerId, addresses, resync) => {
        const { repo, calls } = fakeRepo();
        if (
          !(await answersOrRefuses(() =>
            handlersWith(repo).attachPod({ namespace, name, node, containerId, addresses, resync }, ctx),
          ))
        )
          return;
        const stored = calls.find((c) => c.method === 'attachPod')!.args;
        for (const a of stored[4] as string[]) parseAddress(a);
      },
    ),
    RUNS,
  );
  await fc.assert(
    fc.asyncProperty(dns, labels, async (name, l) => {
      const { repo } = fakeRepo();
      await answersOrRefuses(() => handlersWith(repo).upsertNamespace({ name, labels: l }, ctx));
      await answersOrRefuses(() => handlersWith(repo).deleteNamespace({ name }, ctx));
    }),
    RUNS,
  );
});

test('DeletePolicy, the List RPCs and Explain: any request answers or is refused (Explain: INVALID_ARGUMENT or NOT_FOUND)', async () => {
  const token = fc.oneof(
    fc.constant(''),
    fc.base64String({ maxLength: 40 }),
    fc.string({ maxLength: 20 }),
    fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v) ?? '').toString('base64url')),
    fc
      .array(fc.oneof(fc.string({ maxLength: 4 }), fc.integer()), { maxLength: 4 })
      .chain((v) =>
        fc
          .constantFrom('policies', 'namespaces', 'pods', 'pods of x')
          .map((k) => Buffer.from(JSON.stringify({ k, v })).toString('base64url')),
      ),
  );
  const pageSize = fc.oneof(fc.constantFrom(0, 1, 1000, 1001), fc.nat({ max: 2 ** 32 - 1 }));
  await fc.assert(
    fc.asyncProperty(
      fc.option(
        fc.record({
          kind: fc.oneof(fc.constantFrom('NetworkPolicy', 'AdminNetworkPolicy'), fc.string({ maxLength: 8 })),
          namespace: dns,
          name: dns,
        }),
      ),
      async (policy) => {
        await answersOrRefuses(() => handlersWith(fakeRepo().repo).deletePolicy({ policy: policy ?? undefined }, ctx));
      },
    ),
    RUNS,
  );
  await fc.assert(
    fc.asyncProperty(fc.oneof(fc.constant(''), dns), pageSize, token, async (namespace, size, pageToken) => {
      const h = handlersWith(fakeRepo().repo);
      await answersOrRefuses(() => h.listPolicies({ namespace, pageSize: size, pageToken }, ctx));
      await answersOrRefuses(() => h.listNamespaces({ pageSize: size, pageToken }, ctx));
      await answersOrRefuses(() => h.listPods({ namespace, pageSize: size, pageToken }, ctx));
    }),
    RUNS,
  );
  const endpoint = fc.oneof(
    fc.ipV4(),
    fc.ipV6(),
    fc.constantFrom('x/a', '/', 'a/b/c', ''),
    fc.string({ maxLength: 12 }),
  );
  await fc.assert(
    fc.asyncProperty(
      endpoint,
      endpoint,
      fc.oneof(fc.integer({ min: 0, max: 70000 }), fc.nat()),
      fc.oneof(fc.constantFrom('', 'tcp', 'UDP'), fc.string({ maxLength: 5 })),
      async (from, to, port, protocol) => {
        await answersOrRefuses(
          () => handlersWith(fakeRepo().repo).explain({ from, to, port, protocol }, ctx),
          ['invalid_argument', 'not_found'],
        );
      },
    ),
    RUNS,
  );
});
