import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import pg from 'pg';
import { errorCodeOf } from '../lib/grpc/errors.js';
import { AllocateRequest } from '../gen/weft/ipam/v1/ipam.js';
import { startIpamTestbed, type IpamTestbed } from './support/control-plane.js';

/**
 * What a Kubernetes controller needs from IPAM, over real gRPC on a real PostgreSQL: labels of nodes and namespaces
 * held by IPAM (so pools' selectors work where the agent knows no labels), and a deleted node's blocks given back at
 * once by GarbageCollect.release_blocks.
 */
let tb: IpamTestbed;
let ipam: IpamTestbed['ipam'];
let sql: pg.Client;

before(async () => {
  tb = await startIpamTestbed();
  ({ ipam, sql } = tb);
});
after(() => tb?.stop());

const refused = (code: status, domainCode: string, message?: RegExp) => (err: { code: number; details: string }) => {
  assert.equal(err.code, code, `status ${err.code}: ${err.details}`);
  assert.equal(errorCodeOf(err), domainCode);
  if (message) assert.match(err.details, message);
  return true;
};
const pod = (handle: string, node: string, extra: Record<string, unknown> = {}) => ({
  handle,
  node,
  podNamespace: 'shop',
  podName: handle.split('/')[0]!,
  containerId: handle.split('/')[0]!,
  ...extra,
});

describe('node and namespace labels held by IPAM', () => {
  test("a pool's node selector serves a node whose stored labels match and refuses one whose labels do not", async () => {
    await ipam.createPool({ name: 'zone-a', cidr: '10.60.0.0/24', blockPrefixLength: 28, nodeSelector: 'zone=a' });
    await ipam.setNodeLabels({ node: 'k-a', labels: { zone: 'a', 'topology.kubernetes.io/region': 'eu-1' } });
    await ipam.setNodeLabels({ node: 'k-b', labels: { zone: 'b' } });

    const onA = (await ipam.allocate(pod('la1/eth0', 'k-a'))).allocation!;
    assert.equal(onA.pool, 'zone-a');
    // The same through the group-commit path's sibling, BatchAllocate, and with the pool named.
    const batch = await ipam.batchAllocate({
      requests: [pod('la2/eth0', 'k-a'), pod('lb2/eth0', 'k-b')].map((r) => AllocateRequest.fromPartial(r)),
    });
    assert.equal(batch.results[0]!.allocations[0]!.pool, 'zone-a');
    assert.equal(batch.results[1]!.errorCode, 'ipam.node_not_selected');
    assert.equal((await ipam.allocate(pod('la3/eth0', 'k-a', { pool: 'zone-a' }))).allocation!.pool, 'zone-a');

    await assert.rejects(
      ipam.allocate(pod('lb1/eth0', 'k-b')),
      refused(status.FAILED_PRECONDITION, 'ipam.node_not_selected', /node k-b.*"zone":"b".*zone-a \(zone=a\)/),
    );
    await assert.rejects(
      ipam.allocate(pod('lb3/eth0', 'k-b', { pool: 'zone-a' })),
      refused(status.FAILED_PRECONDITION, 'ipam.node_not_selected'),
    );
    // A node IPAM holds no labels for is refused the same way.
    await assert.rejects(
      ipam.allocate(pod('lu1/eth0', 'k-unknown')),
      refused(status.FAILED_PRECONDITION, 'ipam.node_not_selected'),
    );
    assert.deepEqual(
      (await ipam.listAllocations({ node: 'k-b' })).allocations,
      [],
      'nothing was allocated on the refused node',
    );
  });

  test('labels in the request win over stored ones; changing and removing stored labels takes effect at once', async () => {
    assert.equal(
      (await ipam.allocate(pod('lo1/eth0', 'k-b', { nodeLabels: { zone: 'a' } }))).allocation!.pool,
      'zone-a',
      'request labels override',
    );
    await assert.rejects(
      ipam.allocate(pod('lo2/eth0', 'k-a', { nodeLabels: { zone: 'b' } })),
      refused(status.FAILED_PRECONDITION, 'ipam.node_not_selected'),
    );

    await ipam.setNodeLabels({ node: 'k-b', labels: { zone: 'a' } });
    assert.equal((await ipam.allocate(pod('lo3/eth0', 'k-b'))).allocation!.pool, 'zone-a', 'relabelled node is served');
    await ipam.setNodeLabels({ node: 'k-a', labels: {} });
    await assert.rejects(
      ipam.allocate(pod('lo4/eth0', 'k-a')),
      refused(status.FAILED_PRECONDITION, 'ipam.node_not_selected'),
    );
    assert.equal(
      (await sql.query(`SELECT count(*)::int AS n FROM ipam.node_labels WHERE node = 'k-a'`)).rows[0].n,
      0,
      'empty labels remove the row',
    );
    // What it already holds stays.
    assert.ok((await ipam.listAllocations({ node: 'k-a' })).allocations.some((a) => a.handle === 'la1/eth0'));
  });

  test('stored namespace labels choose a pool by namespace selector, per cluster', async () => {
    await ipam.createPool({
      name: 'team-web',
      cidr: '10.61.0.0/24',
      blockPrefixLength: 28,
      namespaceSelector: 'team=web',
    });
    await ipam.setNamespaceLabels({ namespace: 'web', labels: { team: 'web' } });
    const web = (await ipam.allocate(pod('nw1/eth0', 'k-b', { podNamespace: 'web' }))).allocation!;
    assert.equal(web.pool, 'team-web');
    // Namespaces without the label go elsewhere (here: the node's zone pool), and request labels still win.
    assert.equal((await ipam.allocate(pod('nw2/eth0', 'k-b', { podNamespace: 'shop' }))).allocation!.pool, 'zone-a');
    assert.equal(
      (await ipam.allocate(pod('nw3/eth0', 'k-b', { podNamespace: 'web', namespaceLabels: { team: 'ops' } })))
        .allocation!.pool,
      'zone-a',
    );
    // Another cluster's "web" namespace is another namespace, with labels of its own.
    await ipam.registerCluster({ name: 'east' });
    assert.equal(
      (await ipam.allocate(pod('nw4/eth0', 'k-b', { podNamespace: 'web', cluster: 'east' }))).allocation!.pool,
      'zone-a',
    );
    await ipam.setNamespaceLabels({ cluster: 'east', namespace: 'web', labels: { team: 'web' } });
    assert.equal(
      (await ipam.allocate(pod('nw5/eth0', 'k-b', { podNamespace: 'web', cluster: 'east' }))).allocation!.pool,
      'team-web',
    );
    // Removed: the namespace is no longer selected.
    await ipam.setNamespaceLabels({ namespace: 'web', labels: {} });
    assert.equal((await ipam.allocate(pod('nw6/eth0', 'k-b', { podNamespace: 'web' }))).allocation!.pool, 'zone-a');
  });

  test('bad names and labels are refused with INVALID_ARGUMENT naming what to fix, and nothing is stored', async () => {
    await assert.rejects(
      ipam.setNodeLabels({ node: 'bad node', labels: { zone: 'a' } }),
      refused(status.INVALID_ARGUMENT, 'ipam.invalid_node', /DNS name/),
    );
    await assert.rejects(
      ipam.setNodeLabels({ node: 'k-c', labels: { 'bad key!': 'a' } }),
      refused(status.INVALID_ARGUMENT, 'ipam.invalid_labels', /label key "bad key!"/),
    );
    await assert.rejects(
      ipam.setNodeLabels({ node: 'k-c', labels: { zone: 'x'.repeat(64) } }),
      refused(status.INVALID_ARGUMENT, 'ipam.invalid_labels', /value/),
    );
    await assert.rejects(
      ipam.setNodeLabels({ node: 'k-c', labels: { [`${'a'.repeat(254)}/zone`]: 'a' } }),
      refused(status.INVALID_ARGUMENT, 'ipam.invalid_labels'),
    );
    await assert.rejects(
      ipam.setNamespaceLabels({ namespace: 'Web', labels: { team: 'web' } }),
      refused(status.INVALID_ARGUMENT, 'ipam.invalid_namespace', /lowercase/),
    );
    await assert.rejects(
      ipam.setNamespaceLabels({ namespace: 'web', labels: { team: 'web' }, cluster: 'nowhere' }),
      refused(status.NOT_FOUND, 'ipam.cluster_not_found'),
    );
    const { rows } = await sql.query(`SELECT (SELECT count(*) FROM ipam.node_labels WHERE node = 'k-c')::int AS nodes,
      (SELECT count(*) FROM ipam.namespace_labels WHERE namespace = 'Web' OR cluster = 'nowhere')::int AS namespaces`);
    assert.deepEqual(rows[0], { nodes: 0, namespaces: 0 });
  });
});

describe("a deleted node's blocks", () => {
  test("GarbageCollect with release_blocks gives the node's emptied blocks back at once: watchers drop them, another node takes them", async () => {
    await ipam.createPool({ name: 'gone', cidr: '10.62.0.0/28', blockPrefixLength: 29 });
    await ipam.createPool({ name: 'kept', cidr: '10.63.0.0/28', blockPrefixLength: 29 });
    const held = [
      (await ipam.allocate(pod('g1/eth0', 'k-gone', { pool: 'gone' }))).allocation!,
      (await ipam.allocate(pod('g2/eth0', 'k-gone', { pool: 'gone' }))).allocation!,
    ];
    const block = held[0]!.blockCidr;
    const valid = (await ipam.allocate(pod('g3/eth0', 'k-gone', { pool: 'kept' }))).allocation!;
    const blocksOf = async (node: string) =>
      (
        await sql.query(`SELECT cidr::text FROM ipam.blocks WHERE node = $1 AND released_at IS NULL ORDER BY cidr`, [
          node,
        ])
      ).rows.map((r) => r.cidr);

    const ac = new AbortController();
    const watch = ipam.watchBlockAffinities({}, { signal: ac.signal })[Symbol.asyncIterator]();
    try {
      const snapshot = (await watch.next()).value;
      assert.ok(snapshot.upserts.some((u: { cidr: string; node: string }) => u.cidr === block && u.node === 'k-gone'));

      // Without release_blocks (as the agent's CNI GC calls it) the addresses go and the blocks stay with the node.
      const plain = await ipam.garbageCollect({
        node: 'k-gone',
        validHandles: [valid.handle],
        allocatedBefore: new Date(),
      });
      assert.deepEqual(plain.released.map((a) => a.handle).sort(), ['g1/eth0', 'g2/eth0']);
      assert.deepEqual(plain.releasedBlocks, []);
      assert.deepEqual(await blocksOf('k-gone'), [block, valid.blockCidr]);

      // The controller's call for a deleted Node: the emptied block goes; the block holding a valid handle stays.
      const gc = await ipam.garbageCollect({
        node: 'k-gone',
        validHandles: [valid.handle],
        allocatedBefore: new Date(),
        releaseBlocks: true,
      });
      assert.deepEqual(gc.releasedBlocks, [{ cidr: block, pool: 'gone', node: 'k-gone' }]);
      assert.deepEqual(await blocksOf('k-gone'), [valid.blockCidr]);
      const withdrawal = (await watch.next()).value;
      assert.deepEqual([withdrawal.reset, withdrawal.deletes], [false, [block]]);

      // Another node claims that very block; the addresses released a moment ago still rest (the pool's cool-down).
      const next = (await ipam.allocate(pod('n1/eth0', 'k-next', { pool: 'gone' }))).allocation!;
      assert.equal(next.blockCidr, block);
      assert.ok(
        !held.some((h) => h.address === next.address),
        `${next.address} is not one of the resting ${held.map((h) => h.address)}`,
      );
      const claim = (await watch.next()).value;
      assert.deepEqual(
        claim.upserts.map((u: { cidr: string; node: string }) => [u.cidr, u.node]),
        [[block, 'k-next']],
      );
      assert.deepEqual((await ipam.checkConsistency({})).problems, []);
    } finally {
      ac.abort();
    }
  });
});
