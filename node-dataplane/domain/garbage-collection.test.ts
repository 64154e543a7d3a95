import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  isPodHandle,
  planGarbageCollection,
  type GarbageCollectionInput,
  type NodeAllocation,
} from './garbage-collection.js';

const alloc = (containerId: string, ifname: string, address: string): NodeAllocation => ({
  handle: `${containerId}/${ifname}`,
  containerId,
  address,
});

const rec = (network: string, containerId: string) => ({ network, containerId, defaultRoute: true });
const link = (name: string, record: ReturnType<typeof rec> | null = null) => ({ name, record });
const names: Record<string, string> = {
  'live/eth0': 'weft00000000001',
  'stale/eth0': 'weft00000000002',
  'other/eth0': 'weft00000000003',
  'old/eth0': 'weft00000000004',
};

const base: GarbageCollectionInput = {
  network: 'weft',
  hostIfnameOf: (h) => names[h] ?? `gone:${h}`,
  validHandles: new Set(['live/eth0']),
  validHostIfnames: new Set(['weft00000000001']),
  inFlightHandles: new Set(),
  inFlightHostIfnames: new Set(),
  allocations: [alloc('live', 'eth0', '10.244.0.2'), alloc('stale', 'eth0', '10.244.0.3')],
  hostLinks: [
    link('weft00000000001', rec('weft', 'live')),
    link('weft00000000002', rec('weft', 'stale')),
    link('weft.vxlan'),
    link('eth0'),
    link('weftabc'),
    link('weft0000000000Z'),
  ],
};

describe('isPodHandle', () => {
  it('accepts exactly "<containerId>/<ifname>" of the allocation\'s own container id', () => {
    assert.equal(isPodHandle({ handle: 'c1/eth0', containerId: 'c1' }), true);
    assert.equal(isPodHandle({ handle: 'c1/net1', containerId: 'c1' }), true);
  });

  it('refuses handles that other IPAM users may have made', () => {
    for (const [handle, containerId] of [
      ['vm-42', ''],
      ['c1/eth0', ''],
      ['c1/eth0', 'c2'],
      ['c1/', 'c1'],
      ['c1/a/b', 'c1'],
      ['c1/abcdefghijklmnop', 'c1'],
      ['-x/eth0', '-x'],
    ]) {
      assert.equal(isPodHandle({ handle: handle!, containerId: containerId! }), false, `${handle} (${containerId})`);
    }
  });
});

describe('planGarbageCollection', () => {
  it('releases stale pod handles and removes stale Weft pod interfaces, nothing else', () => {
    assert.deepEqual(planGarbageCollection(base), {
      removeLinks: ['weft00000000002'],
      release: [alloc('stale', 'eth0', '10.244.0.3')],
    });
  });

  it('never touches an attachment whose ADD is running now', () => {
    const plan = planGarbageCollection({
      ...base,
      inFlightHandles: new Set(['stale/eth0']),
      inFlightHostIfnames: new Set(['weft00000000002']),
    });
    assert.deepEqual(plan, { removeLinks: [], release: [] });
  });

  it("touches only the named network's attachments; one without a record only when no address is behind it", () => {
    const input: GarbageCollectionInput = {
      ...base,
      validHandles: new Set(),
      validHostIfnames: new Set(),
      allocations: [
        alloc('live', 'eth0', '10.244.0.2'),
        alloc('other', 'eth0', '10.244.0.4'),
        alloc('old', 'eth0', '10.244.0.5'),
        alloc('dead', 'eth0', '10.244.0.6'),
      ],
      hostLinks: [
        link('weft00000000001', rec('weft', 'live')),
        link('weft00000000003', rec('weft-second', 'other')),
        link('weft00000000004'), // made before records: an address is behind it
        link('weft00000000005'), // no record, no address: an orphan
        link('weft00000000006', rec('weft-second', 'gone')),
      ],
    };
    assert.deepEqual(planGarbageCollection(input), {
      removeLinks: ['weft00000000001', 'weft00000000005'],
      release: [alloc('dead', 'eth0', '10.244.0.6'), alloc('live', 'eth0', '10.244.0.2')],
    });
    const other = planGarbageCollection({ ...input, network: 'weft-second' });
    assert.deepEqual(other.removeLinks, ['weft00000000003', 'weft00000000005', 'weft00000000006']);
    assert.deepEqual(
      other.release.map((a) => a.handle),
      ['dead/eth0', 'other/eth0'],
    );
    const unnamed = planGarbageCollection({ ...input, network: '' });
    assert.deepEqual(unnamed.removeLinks, ['weft00000000005']);
    assert.deepEqual(
      unnamed.release.map((a) => a.handle),
      ['dead/eth0'],
    );
  });

  it('keeps allocations other systems made on this node', () => {
    const plan = planGarbageCollection({
      ...base,
      allocations: [{ handle: 'reserved-for-vm', containerId: '', address: '10.244.0.9' }],
    });
    assert.deepEqual(plan.release, []);
  });

  it('with nothing valid, collects every pod allocation and interface', () => {
    const plan = planGarbageCollection({ ...base, validHandles: new Set(), validHostIfnames: new Set() });
    assert.deepEqual(
      plan.release.map((a) => a.handle),
      ['live/eth0', 'stale/eth0'],
    );
    assert.deepEqual(plan.removeLinks, ['weft00000000001', 'weft00000000002']);
  });

  it('never releases a valid handle, whatever else is on the node (random cases)', () => {
    let seed = 7;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    for (let round = 0; round < 200; round++) {
      const allocations = Array.from({ length: rand(30) }, (_, i) =>
        alloc(`c${rand(20)}`, ['eth0', 'net1'][rand(2)]!, `10.244.0.${i}`),
      );
      const valid = new Set(allocations.filter(() => rand(2) === 0).map((a) => a.handle));
      const plan = planGarbageCollection({ ...base, allocations, validHandles: valid });
      for (const a of plan.release) assert.equal(valid.has(a.handle), false, `released valid handle ${a.handle}`);
      for (const a of allocations)
        if (!valid.has(a.handle)) assert.ok(plan.release.includes(a), `kept stale ${a.handle}`);
    }
  });
  it("without IPAM's answer, a veth that records no network (perhaps another network's live pod) is not removed", () => {
    const input = {
      ...base,
      allocations: [],
      allocationsKnown: false,
      hostLinks: [...base.hostLinks, link('weft00000000004')],
    };
    assert.deepEqual(planGarbageCollection(input), { removeLinks: ['weft00000000002'], release: [] });
    assert.deepEqual(
      planGarbageCollection({ ...input, allocationsKnown: true }).removeLinks,
      ['weft00000000002', 'weft00000000004'],
      "with IPAM's answer it holds no address: collected",
    );
  });
});
