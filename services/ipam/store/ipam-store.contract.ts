import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { IpamStore, PoolRecord } from '../domain/ipam-store.js';
import { TransientConflict } from '../domain/ipam.errors.js';
import { validatePoolSpec, type AllocationRequest } from '../domain/pool.js';

/**
 * The contract every IpamStore keeps, as the use cases rely on it: run against PostgreSQL (postgres.store.test.ts)
 * and the in-memory store (in-memory.store.test.ts), so a unit test of the use cases on the in-memory store says
 * what the product does. `makeStore` gives an empty store (only the default routing domain).
 */
export function runIpamStoreContract(name: string, makeStore: () => Promise<IpamStore>): void {
  const req = (handle: string, node: string, extra: Partial<AllocationRequest> = {}): AllocationRequest => ({
    handle,
    node,
    pool: null,
    families: null,
    podNamespace: 'ns',
    podName: handle,
    containerId: handle,
    addresses: [],
    owner: '',
    namespacePool: null,
    nodeLabels: {},
    namespaceLabels: {},
    use: 'workload',
    cluster: null,
    attemptId: null,
    podUid: '',
    ...extra,
  });
  async function pool(
    store: IpamStore,
    poolName: string,
    cidr: string,
    rules: {
      blockPrefixLength?: number;
      cooldownSeconds?: number;
      stickySeconds?: number;
      maxBlocksPerNode?: number;
    } = {},
  ): Promise<PoolRecord> {
    await store.createPool(
      validatePoolSpec({
        name: poolName,
        cidr,
        blockPrefixLength: rules.blockPrefixLength ?? 30,
        cooldownSeconds: rules.cooldownSeconds ?? 3600,
        ...rules,
      }),
    );
    return (await store.readPoolCatalog()).pools.find((p) => p.name === poolName)!;
  }
  /** Claims a block for the node and takes `n` addresses from the node's blocks. */
  async function fill(store: IpamStore, p: PoolRecord, node: string, handles: string[]): Promise<string[]> {
    return store.transaction(async (tx) => {
      const out: string[] = [];
      for (const h of handles) {
        let a = await tx.allocateFromNodeBlocks(p, req(h, node));
        if (!a && (await tx.claimBlock(p, node))) a = await tx.allocateFromNodeBlocks(p, req(h, node));
        out.push(a?.address ?? 'none');
      }
      return out;
    });
  }
  const affinities = async (store: IpamStore) =>
    (await store.affinitySnapshot()).upserts.map((b) => `${b.cidr} ${b.node}`);

  describe(`IpamStore contract: ${name}`, () => {
    test('pools: listed with their etag, in the catalog of the default domain; overlaps, repeated names and stale etags are refused', async () => {
      const store = await makeStore();
      const a = await pool(store, 'a', '10.1.0.0/24');
      assert.equal(a.routingDomain, 'default');
      assert.equal((await store.readPoolCatalog()).domainOf.get(''), a.routingDomainId);
      await assert.rejects(pool(store, 'b', '10.1.0.128/25'), { code: 'ipam.pool_overlaps' });
      await assert.rejects(pool(store, 'a', '10.2.0.0/24'), { code: 'ipam.pool_exists' });
      const listed = (await store.listPools({ after: null, limit: 10 })).items;
      assert.deepEqual(
        listed.map((p) => [p.name, p.cidr, p.etag]),
        [['a', '10.1.0.0/24', a.etag]],
      );
      const changed = await store.updatePool('a', a.etag, { cooldownSeconds: 5 });
      assert.equal(changed.cooldownSeconds, 5);
      assert.notEqual(changed.etag, a.etag);
      await assert.rejects(store.updatePool('a', a.etag, { cooldownSeconds: 7 }), { code: 'ipam.stale_etag' });
      await assert.rejects(store.updatePool('nope', a.etag, {}), { code: 'ipam.pool_not_found' });
      assert.equal((await store.readPoolCatalog()).pools[0]!.cooldownSeconds, 5);
    });

    test('block claims: the lowest free block, logged as an affinity change; a full pool and the per-node limit claim nothing', async () => {
      const store = await makeStore();
      const p = await pool(store, 'p', '10.2.0.0/28', { maxBlocksPerNode: 2 });
      const claim = (node: string) =>
        store.transaction(async (tx) => {
          await tx.lockClaims();
          return tx.claimBlock(p, node);
        });
      assert.equal(await claim('n1'), true);
      assert.equal(await claim('n2'), true);
      assert.deepEqual(await affinities(store), ['10.2.0.0/30 n1', '10.2.0.4/30 n2']);
      const changes = await store.affinityChangesSince(0);
      assert.deepEqual(
        changes.map((c) => c.upserts.map((b) => `${b.cidr} ${b.pool} ${b.node}`)),
        [['10.2.0.0/30 p n1'], ['10.2.0.4/30 p n2']],
      );
      assert.ok(changes[1]!.revision > changes[0]!.revision);
      assert.equal((await store.affinitySnapshot()).revision, changes[1]!.revision);
      assert.equal(await claim('n1'), true);
      assert.equal(await claim('n1'), false, 'n1 holds the most blocks a node may hold');
      assert.equal(await claim('n3'), true);
      assert.equal(await claim('n4'), false, 'the pool is full');
      assert.deepEqual(await store.nodesHoldingAddresses(), ['n1', 'n2', 'n3']);
    });

    test("a node's blocks hand out never-used addresses in order, stepping over reservations and exact addresses", async () => {
      const store = await makeStore();
      const p = await pool(store, 'p', '10.3.0.0/24', { blockPrefixLength: 29 });
      await store.createReservation('p', '10.3.0.1', '10.3.0.2', 'gateways');
      assert.equal(
        await store.transaction((tx) => tx.allocateFromNodeBlocks(p, req('x', 'n1'))),
        null,
        'a node without blocks gets nothing',
      );
      assert.deepEqual(await fill(store, p, 'n1', ['h0', 'h1']), ['10.3.0.0', '10.3.0.3']);
      // An exact address ahead of the offset is stepped over when the offset reaches it.
      await store.transaction(async (tx) => {
        const block = await tx.lockBlockAt(p.routingDomainId, '10.3.0.4');
        assert.equal(block?.node, 'n1');
        await tx.takeAddress(p, block!.id, '10.3.0.4', req('exact', 'n1'));
      });
      assert.deepEqual(await fill(store, p, 'n1', ['h2', 'h3', 'h4', 'h5', 'h6']), [
        '10.3.0.5',
        '10.3.0.6',
        '10.3.0.7',
        '10.3.0.8',
        '10.3.0.9',
      ]);
      assert.deepEqual(await fill(store, p, 'n2', ['m0']), ['10.3.0.16'], "another node's block is its own");
      assert.equal(await store.liveAllocationsOfNode('n1'), 8);
      const usage = await store.transaction((tx) => tx.nodeBlockUsage(p, 'n1'));
      assert.deepEqual(usage, { blocks: 2, live: 8n, roomy: 1 });
    });

    test('a never-used address taken as an exact one and released rests like any other: both paths step over it', async () => {
      const store = await makeStore();
      const p = await pool(store, 'p', '10.16.0.0/29', { blockPrefixLength: 29, cooldownSeconds: 3600 });
      assert.deepEqual(await fill(store, p, 'n1', ['a']), ['10.16.0.0']);
      for (const [h, address] of [
        ['x', '10.16.0.1'],
        ['y', '10.16.0.3'],
      ] as const) {
        await store.transaction(async (tx) =>
          tx.takeAddress(p, (await tx.lockBlockAt(p.routingDomainId, address))!.id, address, req(h, 'n1')),
        );
        await store.releaseHandle(h);
      }
      assert.deepEqual(await store.allocateFast(p, req('b', 'n1')), { kind: 'skipped' });
      const b = await store.allocateFast(p, req('b', 'n1'));
      assert.equal(b.kind === 'new' && b.allocation.address, '10.16.0.2');
      assert.deepEqual(await fill(store, p, 'n1', ['c']), ['10.16.0.4']);
    });

    test('released addresses rest for the cool-down; past it the longest-free is reused first', async () => {
      const store = await makeStore();
      const slow = await pool(store, 'slow', '10.4.0.0/30', { cooldownSeconds: 3600 });
      assert.deepEqual(await fill(store, slow, 'n1', ['s0', 's1', 's2', 's3']), [
        '10.4.0.0',
        '10.4.0.1',
        '10.4.0.2',
        '10.4.0.3',
      ]);
      assert.deepEqual(
        (await store.releaseHandle('s1')).map((a) => a.address),
        ['10.4.0.1'],
      );
      assert.equal(await store.transaction((tx) => tx.allocateFromNodeBlocks(slow, req('s4', 'n1'))), null);
      const rest = await store.transaction((tx) => tx.resting(slow, '10.4.0.1', ''));
      assert.ok(rest?.until && rest.until.getTime() > Date.now() + 3000_000, 'rests about an hour');
      assert.equal(await store.transaction((tx) => tx.resting(slow, '10.4.0.2', '')), null);

      const fast = await pool(store, 'fast', '10.5.0.0/30', { cooldownSeconds: 0 });
      await fill(store, fast, 'n1', ['f0', 'f1', 'f2', 'f3']);
      await store.releaseHandle('f2');
      await new Promise((r) => setTimeout(r, 5));
      await store.releaseHandle('f0');
      await new Promise((r) => setTimeout(r, 5));
      assert.deepEqual(await fill(store, fast, 'n1', ['f4', 'f5', 'f6']), ['10.5.0.2', '10.5.0.0', 'none']);
    });

    test("a release within a scope frees only the handle's allocations of that node and those pools", async () => {
      const store = await makeStore();
      const p = await pool(store, 'scoped', '10.7.0.0/29', { cooldownSeconds: 0 });
      assert.deepEqual(await fill(store, p, 'n1', ['h1']), ['10.7.0.0']);
      assert.deepEqual(await store.releaseHandle('h1', { node: 'n2' }), [], "another node's scope frees nothing");
      assert.deepEqual(
        await store.releaseHandle('h1', { pools: ['elsewhere'] }),
        [],
        "another pool's scope frees nothing",
      );
      assert.deepEqual(
        (await store.releaseHandle('h1', { node: 'n1', pools: ['scoped'] })).map((a) => a.address),
        ['10.7.0.0'],
      );
    });

    test("an owner's released address is held for it on its node; nobody else takes it", async () => {
      const store = await makeStore();
      const p = await pool(store, 'p', '10.6.0.0/30', { cooldownSeconds: 0, stickySeconds: 600 });
      const owned = req('web-0/eth0', 'n1', { owner: 'statefulset/shop/web-0' });
      await store.transaction(async (tx) => {
        await tx.claimBlock(p, 'n1');
        await tx.allocateFromNodeBlocks(p, req('other', 'n1'));
        assert.equal((await tx.allocateFromNodeBlocks(p, owned))?.address, '10.6.0.1');
      });
      await store.releaseHandle('web-0/eth0');
      await store.releaseHandle('other');
      const rest = await store.transaction((tx) => tx.resting(p, '10.6.0.1', ''));
      assert.ok(rest?.until && rest.until.getTime() > Date.now() + 500_000, 'held for the owner for its sticky time');
      assert.equal(rest.owner, 'statefulset/shop/web-0');
      assert.equal(
        await store.transaction((tx) => tx.allocateHeld([p], { ...owned, node: 'n2' })),
        null,
        'not on another node',
      );
      assert.deepEqual(
        await fill(store, p, 'n1', ['a', 'b', 'c', 'd']),
        ['10.6.0.2', '10.6.0.3', '10.6.0.0', 'none'],
        'others skip the held address',
      );
      assert.equal(
        (await store.transaction((tx) => tx.allocateHeld([p], { ...owned, handle: 'web-0/eth1' })))?.address,
        '10.6.0.1',
      );
    });

    test('one statement: none without a block, new with the room left, the live allocation for its handle, skipped over a reservation', async () => {
      const store = await makeStore();
      const p = await pool(store, 'p', '10.7.0.0/29', { blockPrefixLength: 29 });
      assert.deepEqual(await store.allocateFast(p, req('h0', 'n1')), { kind: 'none' });
      await fill(store, p, 'n1', ['first']);
      const r = await store.allocateFast(p, req('h0', 'n1', { podUid: 'uid-0' }));
      assert.equal(r.kind, 'new');
      assert.deepEqual(
        r.kind === 'new' && [r.allocation.address, r.allocation.blockCidr, r.allocation.podUid, r.room],
        ['10.7.0.1', '10.7.0.0/29', 'uid-0', 6n],
      );
      const again = await store.allocateFast(p, req('h0', 'n1'));
      assert.deepEqual(
        again.kind === 'existing' && [again.allocation.address, again.allocation.pool, again.allocation.routingDomain],
        ['10.7.0.1', 'p', 'default'],
      );
      await store.createReservation('p', '10.7.0.2', '10.7.0.2', '');
      assert.deepEqual(await store.allocateFast(p, req('h1', 'n1')), { kind: 'skipped' });
      const next = await store.allocateFast(p, req('h1', 'n1'));
      assert.equal(next.kind === 'new' && next.allocation.address, '10.7.0.3');
    });

    test('a fenced attempt allocates nothing, on either path; pruned fences are forgotten', async () => {
      const store = await makeStore();
      const p = await pool(store, 'p', '10.8.0.0/29');
      await fill(store, p, 'n1', ['first']);
      assert.equal(await store.transaction((tx) => tx.enterAttempt('h/eth0', 'a1')), null);
      await store.fenceAttempt('h/eth0', 'a1');
      const fenced = await store.transaction((tx) => tx.enterAttempt('h/eth0', 'a1'));
      assert.ok(fenced instanceof Date);
      const fast = await store.allocateFast(p, req('h/eth0', 'n1', { attemptId: 'a1' }));
      assert.equal(fast.kind, 'fenced');
      assert.equal(await store.holderOfHandle('h/eth0'), null);
      assert.equal(
        await store.transaction((tx) => tx.enterAttempt('h/eth0', 'a2')),
        null,
        'another attempt of the handle is not fenced',
      );
      await new Promise((r) => setTimeout(r, 5));
      assert.ok((await store.pruneAttempts(0)) >= 1);
      assert.equal(await store.transaction((tx) => tx.enterAttempt('h/eth0', 'a1')), null, 'forgotten');
    });

    test('a transaction that throws leaves nothing: no block, no allocation, no affinity change', async () => {
      const store = await makeStore();
      const p = await pool(store, 'p', '10.9.0.0/29');
      await assert.rejects(
        store.transaction(async (tx) => {
          await tx.lockClaims();
          await tx.claimBlock(p, 'n1');
          await tx.allocateFromNodeBlocks(p, req('h', 'n1'));
          throw new Error('second family failed');
        }),
        /second family failed/,
      );
      assert.equal(await store.holderOfHandle('h'), null);
      assert.deepEqual(await affinities(store), []);
      assert.deepEqual(await store.affinityChangesSince(0), []);
    });

    test('exact addresses: the pool and block holding one, who holds it, a reservation covering it; a claim of its block', async () => {
      const store = await makeStore();
      const p = await pool(store, 'p', '10.10.0.0/24');
      await store.createReservation('p', '10.10.0.200', '10.10.0.210', 'lb');
      const got = await store.transaction(async (tx) => {
        assert.equal(await tx.poolContaining(p.routingDomainId, '10.10.0.77'), p.id);
        assert.equal(await tx.poolContaining(p.routingDomainId, '10.11.0.1'), null);
        assert.deepEqual(await tx.reservationCovering(p.id, '10.10.0.205'), {
          first: '10.10.0.200',
          last: '10.10.0.210',
        });
        assert.equal(await tx.reservationCovering(p.id, '10.10.0.77'), null);
        assert.equal(await tx.lockBlockAt(p.routingDomainId, '10.10.0.77'), null);
        await tx.lockClaims();
        const block = await tx.claimBlockAt(p, '10.10.0.77', 'n9');
        return tx.takeAddress(p, block, '10.10.0.77', req('x', 'n9'));
      });
      assert.deepEqual([got.address, got.blockCidr, got.node], ['10.10.0.77', '10.10.0.76/30', 'n9']);
      assert.deepEqual(await affinities(store), ['10.10.0.76/30 n9']);
      assert.equal(await store.transaction((tx) => tx.liveHolder(p.routingDomainId, '10.10.0.77')), 'x');
      // A live address taken again is a lost race the caller may retry (as two concurrent exact allocations would).
      await assert.rejects(
        store.transaction(async (tx) =>
          tx.takeAddress(p, (await tx.lockBlockAt(p.routingDomainId, '10.10.0.77'))!.id, '10.10.0.77', req('y', 'n9')),
        ),
        TransientConflict,
      );
      // The lowest free block is still the pool's first one.
      await fill(store, p, 'n1', ['a']);
      assert.deepEqual(await affinities(store), ['10.10.0.0/30 n1', '10.10.0.76/30 n9']);
      assert.equal(await store.transaction((tx) => tx.blocksBelowClaimHint(p)), 0n);
      await fill(store, p, 'n2', ['b']);
      assert.equal(await store.transaction((tx) => tx.blocksBelowClaimHint(p)), 1n);
    });

    test('releases name handles: every family of a handle; garbage collection spares valid handles; a departed node before a time', async () => {
      const store = await makeStore();
      const v4 = await pool(store, 'v4', '10.12.0.0/28', { blockPrefixLength: 28 });
      const v6 = await pool(store, 'v6', 'fd00:12::/124', { blockPrefixLength: 124 });
      await store.transaction(async (tx) => {
        await tx.claimBlock(v4, 'n1');
        await tx.claimBlock(v6, 'n1');
        for (const h of ['dual', 'keep', 'gone']) await tx.allocateFromNodeBlocks(v4, req(h, 'n1'));
        await tx.allocateFromNodeBlocks(v6, req('dual', 'n1'));
      });
      assert.deepEqual(await store.holderOfHandle('dual'), { node: 'n1', pools: ['v4', 'v6'] });
      const page = await store.listAllocations({ node: 'n1' }, { after: null, limit: 3 });
      assert.deepEqual(
        page.items.map((a) => a.address),
        ['10.12.0.0', '10.12.0.1', '10.12.0.2'],
      );
      assert.deepEqual(
        (await store.listAllocations({ node: 'n1' }, { after: page.next, limit: 3 })).items.map((a) => a.address),
        ['fd00:12::'],
      );
      assert.deepEqual(
        (await store.releaseHandle('dual')).map((a) => [a.family, a.address]),
        [
          [4, '10.12.0.0'],
          [6, 'fd00:12::'],
        ],
      );
      assert.deepEqual(await store.releaseHandle('dual'), [], 'released twice: nothing');
      assert.deepEqual(
        (await store.releaseInvalidHandles('n1', ['keep'])).map((a) => a.handle),
        ['gone'],
      );
      assert.deepEqual(
        await store.releaseNodeAllocationsBefore('n1', new Date(Date.now() - 3600_000)),
        [],
        'made after the departure',
      );
      assert.deepEqual(
        (await store.releaseNodeAllocationsBefore('n1', new Date(Date.now() + 1000))).map((a) => a.handle),
        ['keep'],
      );
      assert.equal(await store.liveAllocationsOfNode('n1'), 0);
    });

    test("a gone node's empty blocks return at once; empty blocks return after their grace", async () => {
      const store = await makeStore();
      const p = await pool(store, 'p', '10.13.0.0/28', { cooldownSeconds: 0 });
      await fill(store, p, 'n1', ['a', 'b', 'c', 'd', 'e']);
      await fill(store, p, 'n2', ['x']);
      await store.releaseHandle('e');
      const rev = (await store.affinitySnapshot()).revision;
      assert.deepEqual(
        (await store.releaseNodeBlocks('n1')).map((b) => b.cidr),
        ['10.13.0.4/30'],
        'the block still holding a, b, c, d stays',
      );
      assert.deepEqual(
        (await store.affinityChangesSince(rev)).map((c) => c.deletes),
        [['10.13.0.4/30']],
      );
      assert.deepEqual(await affinities(store), ['10.13.0.0/30 n1', '10.13.0.8/30 n2']);
      await store.releaseHandle('x');
      assert.deepEqual(await store.releaseEmptyBlocks(3600), [], 'within the grace');
      await new Promise((r) => setTimeout(r, 5));
      assert.deepEqual(
        (await store.releaseEmptyBlocks(0)).map((b) => `${b.cidr} ${b.node}`),
        ['10.13.0.8/30 n2'],
      );
      // A released block is the lowest free one again.
      assert.deepEqual(await fill(store, p, 'n3', ['y']), ['10.13.0.4']);
      // A block whose address still cools down stays, whatever the grace.
      const slow = await pool(store, 'slow', '10.13.1.0/30', { cooldownSeconds: 3600 });
      await fill(store, slow, 'n4', ['s']);
      await store.releaseHandle('s');
      await new Promise((r) => setTimeout(r, 5));
      assert.deepEqual(await store.releaseEmptyBlocks(0), []);
    });

    test('reservations: refused over a live address, listed by pool, deleted once; labels stored and removed', async () => {
      const store = await makeStore();
      const p = await pool(store, 'p', '10.14.0.0/28');
      await fill(store, p, 'n1', ['a']);
      await assert.rejects(store.createReservation('p', '10.14.0.0', '10.14.0.3', ''), {
        code: 'ipam.reservation_in_use',
      });
      await assert.rejects(store.createReservation('p', '10.15.0.0', '10.15.0.3', ''), {
        code: 'ipam.invalid_reservation',
      });
      await assert.rejects(store.createReservation('q', '10.14.0.8', '10.14.0.9', ''), { code: 'ipam.pool_not_found' });
      const r = await store.createReservation('p', '10.14.0.8', '10.14.0.9', 'vip');
      assert.deepEqual([r.pool, r.first, r.last, r.reason], ['p', '10.14.0.8', '10.14.0.9', 'vip']);
      assert.deepEqual(
        (await store.listReservations('p', { after: null, limit: 10 })).items.map((x) => x.id),
        [r.id],
      );
      assert.equal(await store.deleteReservation('p', r.id), true);
      assert.equal(await store.deleteReservation('p', r.id), false);

      await store.setNodeLabels('n1', { zone: 'a' });
      await store.setNamespaceLabels(null, 'shop', { team: 'web' });
      assert.deepEqual(await store.storedLabels({ node: 'n1', cluster: '', namespace: 'shop' }), {
        node: { zone: 'a' },
        namespace: { team: 'web' },
      });
      assert.deepEqual(await store.storedLabels({ node: null, cluster: '', namespace: null }), {
        node: null,
        namespace: null,
      });
      await store.setNodeLabels('n1', {});
      assert.deepEqual((await store.storedLabels({ node: 'n1', cluster: '', namespace: null })).node, null);
      await assert.rejects(store.setNamespaceLabels('nowhere', 'shop', { a: 'b' }), { code: 'ipam.cluster_not_found' });
    });
  });
}
