import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { status } from '@grpc/grpc-js';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createClient, type PromiseClient } from '../lib/grpc/client.js';
import { MAX_MESSAGE_BYTES } from '../lib/grpc/limits.js';
import { silentLogger } from '../lib/logger.js';
import {
  IpamServiceService,
  GetUtilizationResponse,
  WatchBlockAffinitiesResponse,
  type GetUtilizationResponse as UtilizationPage,
} from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService, ListNodesResponse, WatchRoutesResponse } from '../gen/weft/routes/v1/routes.js';
import { ListPoliciesResponse, PolicyServiceService, WatchNodePolicyResponse } from '../gen/weft/policy/v1/policy.js';
import { followRoutes, type RoutesSnapshot } from '../node-dataplane/sources/routes-watch.js';
import { followNodePolicy } from '../node-dataplane/sources/policy-watch.js';
import type { NodeRules } from '../node-dataplane/domain/network-policy.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';
import { bin } from './support/processes.js';

/**
 * Messages that grow with the cluster, at the sizes Weft is built for (5,000 nodes, 150,000 pods): a client with
 * grpc-js's default limit (4 MiB, which Weft's clients also set) gets all of it, every message far below the limit.
 * Before chunking and paging, a 150,000-pod dual-stack policy view was one message over the limit: the agent got
 * RESOURCE_EXHAUSTED and reconnected forever, holding no rules.
 */
const NODES = 5000;
const PODS = 150_000;
/** Node names as clouds give them (about 40 characters). */
const nodeName = (i: number) => `ip-10-${16 + (i >> 16)}-${(i >> 8) & 255}-${i & 255}.eu-west-1.compute.internal`;
/** A chunk of a watch message or a page, at most: a quarter of the limit. */
const WELL_BELOW = MAX_MESSAGE_BYTES / 4;

let cp: TestControlPlane;
let routes: PromiseClient<typeof RoutesServiceService>;
let ipam: PromiseClient<typeof IpamServiceService>;
let policy: PromiseClient<typeof PolicyServiceService>;
let sql: pg.Client;

before(async () => {
  cp = await startTestControlPlane();
  routes = createClient(RoutesServiceService, cp.address, { security: cp.security });
  ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  policy = createClient(PolicyServiceService, cp.address, { security: cp.security });
  sql = new pg.Client({ connectionString: cp.databaseUrl });
  await sql.connect();
});

after(async () => {
  routes?.close();
  ipam?.close();
  policy?.close();
  await sql?.end().catch(() => {});
  await cp?.stop();
});

/** Collects one joined watch message: chunks until one with more = false. */
async function joinedMessage<T extends { more: boolean; bookmark?: boolean }>(
  it: AsyncIterator<T>,
  sizeOf: (m: T) => number,
) {
  const chunks: T[] = [];
  const sizes: number[] = [];
  for (;;) {
    const r = await it.next();
    if (r.done) throw new Error('stream ended');
    if (r.value.bookmark) continue;
    chunks.push(r.value);
    sizes.push(sizeOf(r.value));
    if (!r.value.more) return { chunks, sizes };
  }
}

describe('5,000 nodes, each with its blocks', { timeout: 300_000 }, () => {
  before(async () => {
    await ipam.createPool({ name: 'big', cidr: '10.0.0.0/12', blockPrefixLength: 26 });
    // Seeded under the API in two statements (5,000 RegisterNode calls and 5,000 block claims take minutes): the
    // nodes, then one /26 block each (30 pods a node: 150,000 pods), logged as IPAM logs a claim. The routes service
    // learns the blocks as it does in production, from IPAM's WatchBlockAffinities, and logs each node's entry.
    const name = `'ip-10-' || (16 + (i >> 16)) || '-' || ((i >> 8) & 255) || '-' || (i & 255) || '.eu-west-1.compute.internal'`;
    await sql.query(`INSERT INTO routes.nodes (name, underlay_address, vtep_mac, revision, lease_expires_at)
      SELECT ${name}, '192.0.2.0'::inet + i, ('02:00:00:00:' || lpad(to_hex((i >> 8) & 255), 2, '0') || ':' || lpad(to_hex(i & 255), 2, '0'))::macaddr,
        nextval('routes.revision_seq'), now() + interval '1 hour'
      FROM generate_series(0, ${NODES - 1}) i`);
    await sql.query(`WITH b AS (
        INSERT INTO ipam.blocks (pool_id, routing_domain_id, cidr, node, reserved)
        SELECT p.id, p.routing_domain_id, set_masklen('10.0.0.0'::inet + i * 64, 26)::cidr, ${name}, 0
        FROM ipam.pools p, generate_series(0, ${NODES - 1}) i WHERE p.name = 'big' RETURNING cidr, node)
      INSERT INTO ipam.block_events (revision, cidr, pool, node) SELECT nextval('ipam.revision_seq'), cidr, 'big', node FROM b ORDER BY cidr`);
    await sql.query(`SELECT pg_notify('ipam_blocks', '')`);
    assert.equal(
      nodeName(NODES - 1),
      (await sql.query(`SELECT ${name} AS n FROM (SELECT ${NODES - 1} AS i) x`)).rows[0].n,
    );
  });

  test('an agent assembles a routes snapshot of 5,000 nodes and their blocks, sent in chunks well below the limit, and acts only on the whole', async (t) => {
    // The affinity follower has recorded every block once the table shows them (one by one, when it had synced
    // before the blocks were seeded: up to half a minute).
    const deadline = Date.now() + 120_000;
    const ac = new AbortController();
    try {
      for (;;) {
        const it = routes
          .watchRoutes({ node: 'watcher', acceptChunks: true }, { signal: ac.signal })
          [Symbol.asyncIterator]();
        const { chunks, sizes } = await joinedMessage(it, (m) => WatchRoutesResponse.encode(m).finish().length);
        await it.return?.();
        const upserts = chunks.flatMap((c) => c.upserts);
        if (upserts.filter((u) => u.blockCidrs.length > 0).length < NODES) {
          assert.ok(Date.now() < deadline, 'the blocks reached the route table');
          await new Promise((r) => setTimeout(r, 500));
          continue;
        }
        t.diagnostic(`routes snapshot: ${sizes.reduce((a, b) => a + b, 0)} bytes in ${chunks.length} messages`);
        assert.ok(
          chunks.every((c) => c.reset && c.revision === chunks[0]!.revision),
          'every chunk is of the one snapshot',
        );
        assert.ok(
          chunks.length > 1,
          `the snapshot (${sizes.reduce((a, b) => a + b, 0)} bytes) comes in several messages`,
        );
        assert.ok(Math.max(...sizes) <= WELL_BELOW, `every message is well below the limit: ${sizes.join(', ')}`);
        assert.equal(new Set(upserts.map((u) => u.node)).size, NODES);
        break;
      }
    } finally {
      ac.abort();
    }

    // The agent's own source: its first change is the whole table (it writes nothing from a part).
    const seen: number[] = [];
    const agent = new AbortController();
    try {
      const snap = await new Promise<RoutesSnapshot>((resolve) => {
        followRoutes({
          client: routes,
          node: nodeName(0),
          logger: silentLogger,
          signal: agent.signal,
          onChange: (s) => {
            seen.push(s.nodes.size);
            resolve(s);
          },
        });
      });
      assert.deepEqual(seen, [NODES], 'the first change the agent acts on is the complete snapshot');
      assert.ok([...snap.nodes.values()].every((n) => n.blockCidrs.length === 1 && n.blockCidrs[0]!.endsWith('/26')));
    } finally {
      agent.abort();
    }
  });

  test('ListNodes of 5,000 nodes: pages of page_size, each well below the limit, together every node once; page_size 0 still gives all', async (t) => {
    const names: string[] = [];
    let pageToken = '';
    let pages = 0;
    do {
      const page = await routes.listNodes({ pageSize: 1000, pageToken });
      assert.ok(page.nodes.length <= 1000, `a page holds at most page_size nodes, not ${page.nodes.length}`);
      assert.ok(ListNodesResponse.encode(page).finish().length <= WELL_BELOW);
      names.push(...page.nodes.map((n) => n.name));
      pageToken = page.nextPageToken;
      pages++;
    } while (pageToken);
    assert.equal(pages, NODES / 1000);
    assert.equal(new Set(names).size, NODES);
    assert.deepEqual(names, [...names].sort(), 'in name order');
    const whole = await routes.listNodes({});
    t.diagnostic(`ListNodes whole: ${ListNodesResponse.encode(whole).finish().length} bytes`);
    assert.equal(whole.nodes.length, NODES, 'a caller that does not page gets the whole list (it fits)');
    await assert.rejects(routes.listNodes({ pageToken: 'bm9wZQ' }), /page_token/);
  });

  test('GetUtilization --blocks with 5,000 blocks: pages of page_size rows, each well below the limit, together every node and block once', async (t) => {
    const blocks = new Set<string>();
    const nodes = new Set<string>();
    let pageToken = '';
    let pages = 0;
    let page: UtilizationPage;
    do {
      page = await ipam.getUtilization({ pool: '', includeBlocks: true, pageSize: 1000, pageToken });
      const rows = page.pools.reduce((s, p) => s + p.blocks.length + p.nodes.length, 0);
      assert.ok(rows <= 1000, `a page holds at most page_size rows, not ${rows}`);
      assert.ok(GetUtilizationResponse.encode(page).finish().length <= WELL_BELOW);
      for (const p of page.pools) {
        assert.equal(p.pool, 'big');
        assert.equal(p.counts!.total, String(2 ** 20), "each page carries its pools' totals");
        for (const b of p.blocks) {
          assert.ok(!blocks.has(b.cidr), `${b.cidr} listed once`);
          blocks.add(b.cidr);
        }
        for (const n of p.nodes) {
          assert.ok(!nodes.has(n.node), `${n.node} listed once`);
          nodes.add(n.node);
        }
      }
      pageToken = page.nextPageToken;
      pages++;
    } while (pageToken);
    assert.equal(blocks.size, NODES);
    assert.equal(nodes.size, NODES);
    assert.equal(pages, (2 * NODES) / 1000);
    const whole = await ipam.getUtilization({ pool: 'big', includeBlocks: true });
    t.diagnostic(`GetUtilization --blocks whole: ${GetUtilizationResponse.encode(whole).finish().length} bytes`);
    assert.deepEqual(
      [whole.pools[0]!.blocks.length, whole.pools[0]!.nodes.length, whole.nextPageToken],
      [NODES, NODES, ''],
    );
  });

  test('`weft nodes` and `weft ipam utilization --blocks` follow the pages: every node and block of 5,000', async () => {
    const weft = async (...args: string[]) =>
      JSON.parse(
        (
          await promisify(execFile)(bin.weft, [...args, '--json', '--server', cp.address, '--tls-dir', cp.tlsDir], {
            timeout: 60_000,
            maxBuffer: 256 * 1024 * 1024,
          })
        ).stdout,
      );
    const listed = await weft('nodes');
    assert.equal(listed.nodes.length, NODES);
    assert.equal(
      listed.nodes.filter((n: { inRouteTable: boolean }) => n.inRouteTable).length,
      NODES,
      'the route table, read from a chunked snapshot, holds every node',
    );
    const pools = await weft('ipam', 'utilization', '--blocks');
    assert.deepEqual(
      pools.map((p: { pool: string; blocks: unknown[]; nodes: unknown[] }) => [
        p.pool,
        p.blocks.length,
        p.nodes.length,
      ]),
      [['big', NODES, NODES]],
      'one pool, its rows from every page',
    );
  });
});

test(
  "an agent receives a policy view whose set holds 150,000 dual-stack pods' addresses, in chunks well below the limit",
  { timeout: 300_000 },
  async (t) => {
    // 150,000 pods on 5,000 nodes, seeded under the API (150,000 UpsertPod calls would take minutes). Every other
    // address, as churn leaves them: no two pods' addresses merge into a wider CIDR, so the set holds 300,000 entries.
    await policy.upsertNamespace({ name: 'load', labels: { team: 'load' } });
    await sql.query(`INSERT INTO policy.pods (namespace, name, labels, node, addresses, revision)
    SELECT 'load', 'pod-' || i, '{"app": "load"}'::jsonb, 'node-' || (i % 5000),
      ARRAY[host('10.0.0.0'::inet + 2 * i), host('fd00:10:244::'::inet + 2 * i)], nextval('policy.revision_seq')
    FROM generate_series(0, ${PODS - 1}) i`);
    await policy.upsertPod({
      pod: {
        namespace: 'load',
        name: 'web',
        labels: { app: 'web' },
        node: 'watched',
        addresses: ['10.15.255.1', 'fd00:10:245::1'],
        ports: [],
      },
    });
    await policy.applyPolicies({
      objectsJson: [
        JSON.stringify({
          apiVersion: 'networking.k8s.io/v1',
          kind: 'NetworkPolicy',
          metadata: { namespace: 'load', name: 'web-from-load' },
          spec: {
            podSelector: { matchLabels: { app: 'web' } },
            ingress: [{ from: [{ podSelector: { matchLabels: { app: 'load' } } }] }],
          },
        }),
      ],
    });

    const ac = new AbortController();
    try {
      const it = policy
        .watchNodePolicy({ node: 'watched', acceptDeltas: true, acceptChunks: true }, { signal: ac.signal })
        [Symbol.asyncIterator]();
      const { chunks, sizes } = await joinedMessage(it, (m) => WatchNodePolicyResponse.encode(m).finish().length);
      t.diagnostic(`policy view: ${sizes.reduce((a, b) => a + b, 0)} bytes in ${chunks.length} messages`);
      const cidrs = chunks.flatMap((c) => c.sets).reduce((n, s) => n + s.cidrs.length, 0);
      assert.equal(cidrs, 2 * PODS, 'every address of the set arrived');
      assert.ok(
        chunks.length > 1 && Math.max(...sizes) <= WELL_BELOW,
        `every message is well below the limit: ${sizes.join(', ')}`,
      );
    } finally {
      ac.abort();
    }

    // The agent's own source: it holds the whole set, and acted on nothing before.
    const agent = new AbortController();
    const seen: NodeRules[] = [];
    try {
      const rules = await new Promise<NodeRules>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("the agent never got the node's rules")), 60_000);
        followNodePolicy({
          client: policy,
          node: 'watched',
          logger: silentLogger,
          signal: agent.signal,
          onChange: (r) => {
            seen.push(r);
            clearTimeout(timer);
            resolve(r);
          },
        });
      });
      assert.equal(seen.length, 1);
      assert.deepEqual(
        rules.pods.map((p) => p.name),
        ['web'],
      );
      const peer = rules.pods[0]!.ingress.find((e) => e.peerSet)!.peerSet!;
      const set = rules.sets.get(peer)!;
      assert.equal(set.length, 2 * PODS);
      assert.ok(
        set.includes('10.4.147.222/32') && set.includes('fd00:10:244::4:93de/128'),
        'addresses from every chunk are in the set',
      );
    } finally {
      agent.abort();
    }
  },
);

test(
  "the routes service follows IPAM's block affinities of 20 clusters (100,000 blocks): the snapshot comes in chunks well below the limit",
  { timeout: 300_000 },
  async (t) => {
    // Twenty clusters sharing one IPAM, 5,000 nodes with a block each, seeded under the API as above.
    const CLUSTERS = 20;
    for (let c = 0; c < CLUSTERS; c++)
      await ipam.createPool({ name: `cluster-${c}-pods`, cidr: `10.${16 + 8 * c}.0.0/13`, blockPrefixLength: 26 });
    await sql.query(`WITH b AS (
      INSERT INTO ipam.blocks (pool_id, routing_domain_id, cidr, node, reserved)
      SELECT p.id, p.routing_domain_id, set_masklen(network(p.cidr) + i * 64, 26)::cidr, p.name || '-ip-10-0-' || (i >> 8) || '-' || (i & 255) || '.compute.internal', 0
      FROM ipam.pools p, generate_series(0, ${NODES - 1}) i WHERE p.name LIKE 'cluster-%' RETURNING cidr, node, pool_id)
    INSERT INTO ipam.block_events (revision, cidr, pool, node) SELECT nextval('ipam.revision_seq'), b.cidr, p.name, b.node FROM b JOIN ipam.pools p ON p.id = b.pool_id ORDER BY b.cidr`);

    const ac = new AbortController();
    try {
      const it = ipam.watchBlockAffinities({ acceptChunks: true }, { signal: ac.signal })[Symbol.asyncIterator]();
      const { chunks, sizes } = await joinedMessage(it, (m) => WatchBlockAffinitiesResponse.encode(m).finish().length);
      t.diagnostic(`affinity snapshot: ${sizes.reduce((a, b) => a + b, 0)} bytes in ${chunks.length} messages`);
      assert.ok(
        chunks.every((c) => c.reset && c.revision === chunks[0]!.revision),
        'every chunk is of the one snapshot',
      );
      assert.equal(
        new Set(chunks.flatMap((c) => c.upserts.map((u) => u.cidr))).size,
        CLUSTERS * NODES + NODES,
        'every block of every cluster (and the 5,000 above)',
      );
      assert.ok(Math.max(...sizes) <= WELL_BELOW, `every message is well below the limit: ${sizes.join(', ')}`);
    } finally {
      ac.abort();
    }

    // The utilization of all of them: pages run from one pool into the next; asked for whole, it is refused with a hint.
    const rows = new Map<string, number>();
    let pageToken = '';
    do {
      const page = await ipam.getUtilization({ includeBlocks: true, pageSize: 5000, pageToken });
      assert.ok(GetUtilizationResponse.encode(page).finish().length <= WELL_BELOW);
      for (const p of page.pools) rows.set(p.pool, (rows.get(p.pool) ?? 0) + p.blocks.length + p.nodes.length);
      pageToken = page.nextPageToken;
    } while (pageToken);
    assert.equal(rows.size, CLUSTERS + 1);
    assert.ok(
      [...rows.values()].every((n) => n === 2 * NODES),
      "every pool's nodes and blocks, once",
    );
    await assert.rejects(
      ipam.getUtilization({ includeBlocks: true }),
      (e: { code: number; details: string }) => e.code === status.RESOURCE_EXHAUSTED && /page_size/.test(e.details),
    );
  },
);

test(
  'ListPolicies of 10,000 policies (two in each of 5,000 namespaces): pages well below the limit, every policy once; `weft policy list` follows them',
  { timeout: 120_000 },
  async () => {
    // As ApplyPolicies stores them (the object as applied), seeded under the API in one statement.
    const object = JSON.stringify({
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: { namespace: '__NS__', name: '__NAME__', labels: { 'app.kubernetes.io/managed-by': 'platform-team' } },
      spec: {
        podSelector: { matchLabels: { app: 'api', tier: 'backend' } },
        policyTypes: ['Ingress', 'Egress'],
        ingress: [
          {
            from: [
              {
                namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'ingress-nginx' } },
                podSelector: { matchLabels: { 'app.kubernetes.io/name': 'ingress-nginx' } },
              },
            ],
            ports: [
              { protocol: 'TCP', port: 8080 },
              { protocol: 'TCP', port: 'metrics' },
            ],
          },
        ],
        egress: [
          { to: [{ podSelector: { matchLabels: { app: 'postgres' } } }], ports: [{ protocol: 'TCP', port: 5432 }] },
          {
            to: [{ namespaceSelector: {}, podSelector: { matchLabels: { 'k8s-app': 'kube-dns' } } }],
            ports: [{ protocol: 'UDP', port: 53 }],
          },
        ],
      },
    });
    await sql.query(
      `INSERT INTO policy.policies (kind, namespace, name, object, revision)
    SELECT 'NetworkPolicy', 'team-' || (i / 2), n, replace(replace($1, '__NS__', 'team-' || (i / 2)), '__NAME__', n)::jsonb, nextval('policy.revision_seq')
    FROM generate_series(0, ${2 * NODES - 1}) i, LATERAL (SELECT CASE WHEN i % 2 = 0 THEN 'api-ingress' ELSE 'api-egress' END AS n) x`,
      [object],
    );

    const seen = new Set<string>();
    let pageToken = '';
    do {
      const page = await policy.listPolicies({ pageSize: 1000, pageToken });
      assert.ok(
        page.policies.length <= 1000 && ListPoliciesResponse.encode(page).finish().length <= WELL_BELOW,
        `a page of ${page.policies.length} policies is well below the limit`,
      );
      for (const p of page.policies) {
        const id = `${p.ref!.namespace}/${p.ref!.name}`;
        assert.ok(!seen.has(id), `${id} listed once`);
        seen.add(id);
      }
      pageToken = page.nextPageToken;
    } while (pageToken);
    assert.equal(
      [...seen].filter((id) => id.startsWith('team-')).length,
      2 * NODES,
      'every seeded policy (besides those of the tests before)',
    );
    await assert.rejects(
      policy.listPolicies({}),
      (e: { code: number; details: string }) =>
        e.code === status.RESOURCE_EXHAUSTED && /set page_size and follow next_page_token/.test(e.details),
      'a caller that does not page is told to, not sent a short list',
    );
    const listed = JSON.parse(
      (
        await promisify(execFile)(
          bin.weft,
          ['policy', 'list', '--json', '--server', cp.address, '--tls-dir', cp.tlsDir],
          { timeout: 60_000, maxBuffer: 256 * 1024 * 1024 },
        )
      ).stdout,
    );
    assert.equal(listed.length, seen.size);
  },
);
