import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DomainError } from '../../lib/errors.js';
import { createFakeWorld, refused, unavailable, type FakeWorld } from './fake-ports.js';
import { IpamCallError } from './ports.js';
import { createCniUseCases } from './use-cases.js';
import { POLICY_PASS_WAIT_MS } from './use-case-deps.js';
import { createPendingReleases, type PendingReleases } from '../pending-releases.js';

// The decisions of the CNI endpoint's use cases, on fakes of their ports (fake-ports.ts). The same paths on the real
// kernel, IPAM and weft-cni executable: test/cni-conformance.test.ts, test/cni-error-codes.test.ts.

const NETNS = '/run/netns/pod';
const pod = (containerId = 'c1', ifname = 'eth0', more: object = {}) => ({
  containerId,
  ifname,
  netns: NETNS,
  podNamespace: 'shop',
  podName: 'cart-0',
  podUid: '',
  pool: '',
  requestedAddresses: [] as string[],
  mac: '',
  network: 'weft',
  ...more,
});
const where = { containerId: 'c1', ifname: 'eth0', netns: NETNS };

function setup(opts: { dualStack?: boolean; world?: FakeWorld; pendingReleases?: PendingReleases } = {}) {
  const world = opts.world ?? createFakeWorld();
  let attempts = 0;
  const phases: string[] = [];
  const useCases = createCniUseCases({
    node: 'node-a',
    mtu: 1450,
    routeProtocol: 87,
    dualStack: opts.dualStack ?? false,
    ipam: world.ipam,
    pods: world.kernel,
    records: world.kernel,
    policy: world.policy,
    reports: world.reports,
    attachments: world.attachments,
    logger: world.logger,
    onAttachPhase: (p) => void phases.push(`attach ${p}`),
    onDetachPhase: (p) => void phases.push(`detach ${p}`),
    newAttemptId: () => `attempt-${++attempts}`,
    pendingReleases: opts.pendingReleases,
  });
  return { world, useCases, phases, events: world.events };
}

/** Lets the work that follows an answer (setImmediate) and the fakes' ticks run. */
const settle = async () => {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
};

const rejectsWith = (p: Promise<unknown>, code: string, kind: string, message?: RegExp) =>
  assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof DomainError, `a DomainError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.equal(err.kind, kind);
    if (message) assert.match(err.message, message);
    return true;
  });

describe('attach', () => {
  it('allocates once for the handle while the kernel makes the interface, answers the CNI result, then reports and runs a policy pass', async () => {
    const { useCases, events, world, phases } = setup();
    const result = await useCases.attach(pod());
    const host = world.kernel.hostIfname('c1', 'eth0');
    assert.deepEqual(result, {
      interfaces: [
        { name: host, mac: '02:00:00:00:00:01', sandbox: '' },
        { name: 'eth0', mac: '0a:58:0a:f4:00:01', sandbox: NETNS },
      ],
      ips: [{ address: '10.244.0.1/32', gateway: '169.254.1.1', interface: 1 }],
      routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }],
    });
    // Nothing of the report or the pass before the answer.
    assert.ok(!events.some((e) => e.startsWith('report') || e === 'policy pass'));
    await settle();
    assert.deepEqual(events, [
      'policy in force ipv4?',
      'ipam allocate c1/eth0 families=4 attempt=attempt-1',
      `kernel create ${host}`,
      `kernel address ${host} 10.244.0.1`,
      'report attached c1 10.244.0.1',
      'policy pass',
    ]);
    assert.deepEqual(phases, ['attach allocate']);
    assert.deepEqual(world.kernel.links.get(host)?.record, { network: 'weft', containerId: 'c1', defaultRoute: true });
  });

  it('a dual-stack pod waits for policy of both families and asks for both in one Allocate', async () => {
    const { useCases, events, world } = setup({ dualStack: true });
    world.ipam.ipv6 = true;
    const result = await useCases.attach(pod());
    assert.deepEqual(result.ips, [
      { address: '10.244.0.1/32', gateway: '169.254.1.1', interface: 1 },
      { address: 'fd00:10:244::2/128', gateway: 'fe80::1', interface: 1 },
    ]);
    assert.deepEqual(result.routes, [
      { dst: '0.0.0.0/0', gw: '169.254.1.1' },
      { dst: '::/0', gw: 'fe80::1' },
    ]);
    assert.deepEqual(events.slice(0, 3), [
      'policy in force ipv4?',
      'policy in force ipv6?',
      'ipam allocate c1/eth0 families=4,6 attempt=attempt-1',
    ]);
  });

  it('refuses an interface that is already attached, touching neither IPAM nor the kernel', async () => {
    const { useCases, events } = setup();
    await useCases.attach(pod());
    await settle();
    events.length = 0;
    await rejectsWith(
      useCases.attach(pod()),
      'agent.already_attached',
      'already_exists',
      /DEL it before adding it again/,
    );
    assert.deepEqual(events, []);
  });

  it('refuses a second ADD of the same interface while the first runs (ABORTED), and the first still succeeds', async () => {
    const { useCases, world } = setup();
    let answer!: (a: { ipv4: string }) => void;
    world.ipam.nextAllocate = () => new Promise((r) => (answer = r));
    const first = useCases.attach(pod());
    await settle();
    await rejectsWith(useCases.attach(pod()), 'agent.attach_in_progress', 'conflict', /already running/);
    answer({ ipv4: '10.244.0.9' });
    assert.equal((await first).ips[0]!.address, '10.244.0.9/32');
  });

  it('without policy in force attaches nothing and says to try again later (UNAVAILABLE)', async () => {
    const { useCases, world, events } = setup({ dualStack: true });
    world.policy.inForceError[6] = new Error('no ip6tables');
    await rejectsWith(
      useCases.attach(pod()),
      'agent.ipv6_policy_not_ready',
      'unavailable',
      /IPv6 network policy is not in force on node node-a yet.*no ip6tables.*try again later/,
    );
    assert.ok(!events.some((e) => e.startsWith('ipam') || e.startsWith('kernel')));
  });

  it('with no policy port, an IPv4 pod is attached and a dual-stack pod is refused', async () => {
    const world = createFakeWorld();
    const make = (dualStack: boolean) =>
      createCniUseCases({
        node: 'node-a',
        mtu: 1450,
        routeProtocol: 87,
        dualStack,
        ipam: world.ipam,
        pods: world.kernel,
        records: world.kernel,
        policy: {},
        logger: world.logger,
      });
    await make(false).attach(pod('v4'));
    await rejectsWith(make(true).attach(pod('v6')), 'agent.ipv6_policy_not_ready', 'unavailable');
  });

  it('an Allocate that gets no answer is released naming its attempt, and the error says to try again (UNAVAILABLE)', async () => {
    const { useCases, world, events } = setup();
    world.ipam.nextAllocate = async () => {
      throw unavailable();
    };
    await rejectsWith(
      useCases.attach(pod()),
      'agent.ipam_unavailable',
      'unavailable',
      /^IPAM( at \S+)? is unavailable now \(connect ECONNREFUSED.*; try again later$/,
    );
    const host = world.kernel.hostIfname('c1', 'eth0');
    assert.deepEqual(events.slice(1), [
      'ipam allocate c1/eth0 families=4 attempt=attempt-1',
      `kernel create ${host}`,
      'ipam release c1/eth0 attempt=attempt-1',
      `kernel remove ${host}`,
    ]);
    assert.equal(world.kernel.links.size, 0);
  });

  it("a refusal IPAM answered is passed on as IPAM's (no release): unknown pool is the config's fault, cooling down is try again", async () => {
    const { useCases, world, events } = setup();
    world.ipam.nextAllocate = async () => {
      throw refused('ipam.pool_not_found', 'pool "gold" does not exist', 'failed_precondition');
    };
    await rejectsWith(
      useCases.attach(pod('c1', 'eth0', { pool: 'gold' })),
      'agent.unknown_pool',
      'invalid_argument',
      /^the network config names pool "gold", which IPAM does not have \(IPAM: pool "gold" does not exist\); name an existing pool/,
    );
    world.ipam.nextAllocate = async () => {
      throw refused('ipam.address_cooling_down', '10.244.0.7 frees at 12:00:05Z');
    };
    await rejectsWith(
      useCases.attach(pod('c2')),
      'agent.address_cooling_down',
      'unavailable',
      /^IPAM: 10\.244\.0\.7 frees at/,
    );
    world.ipam.nextAllocate = async () => {
      throw refused('ipam.pool_exhausted', 'no free address', 'exhausted');
    };
    await rejectsWith(useCases.attach(pod('c3')), 'agent.ipam_error', 'exhausted', /^IPAM: no free address$/);
    assert.ok(!events.some((e) => e.startsWith('ipam release')));
    assert.equal(world.kernel.links.size, 0);
  });

  it("an error that is not IPAM's passes through as it is (the server makes it INTERNAL)", async () => {
    const { useCases, world } = setup();
    const bug = new TypeError('boom');
    world.ipam.nextAllocate = async () => {
      throw bug;
    };
    await assert.rejects(useCases.attach(pod()), (err) => err === bug);
  });

  it('a dual-stack pod given one family is rolled back and refused, naming the pool that has one family', async () => {
    const { useCases, world, events } = setup({ dualStack: true });
    await rejectsWith(
      useCases.attach(pod('c1', 'eth0', { pool: 'v4-only' })),
      'agent.families_mismatch',
      'invalid_argument',
      /IPAM gave no IPv6 address for c1\/eth0 \(the network config names pool v4-only, which has one family/,
    );
    assert.ok(events.includes('ipam release c1/eth0 attempt=attempt-1'));
    assert.equal(world.ipam.held.size, 0);
    assert.equal(world.kernel.links.size, 0);
  });

  it('a kernel failure releases the allocation naming the attempt and is FAILED_PRECONDITION agent.attach_failed', async () => {
    const { useCases, world, events } = setup();
    world.kernel.failAttach = 'RTNETLINK answers: File exists';
    await rejectsWith(
      useCases.attach(pod()),
      'agent.attach_failed',
      'failed_precondition',
      /^cannot set up the pod interface: RTNETLINK answers: File exists$/,
    );
    const host = world.kernel.hostIfname('c1', 'eth0');
    // The release comes after the kernel removed what it made, which is after the allocation settled.
    assert.deepEqual(events.slice(-2), [`kernel remove ${host}`, 'ipam release c1/eth0 attempt=attempt-1']);
    assert.equal(world.ipam.held.size, 0);
    await settle();
    assert.ok(!events.some((e) => e.startsWith('report')));
  });

  it('a release that does not get through is retried in the background until IPAM fences the attempt', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'] });
    const { useCases, world, events } = setup();
    world.ipam.nextAllocate = async () => {
      world.ipam.down = unavailable();
      throw world.ipam.down;
    };
    await rejectsWith(useCases.attach(pod()), 'agent.ipam_unavailable', 'unavailable');
    assert.equal(events.filter((e) => e === 'ipam release c1/eth0 attempt=attempt-1').length, 1);
    t.mock.timers.tick(2000);
    await settle();
    assert.equal(events.filter((e) => e === 'ipam release c1/eth0 attempt=attempt-1').length, 2);
    world.ipam.down = undefined;
    t.mock.timers.tick(60_000);
    await settle();
    assert.ok(world.ipam.fenced.has('attempt-1'));
    assert.ok(world.logger.lines.some((l) => l.msg === "a failed attach's allocation attempt is fenced"));
    const tries = events.filter((e) => e === 'ipam release c1/eth0 attempt=attempt-1').length;
    t.mock.timers.tick(120_000);
    await settle();
    assert.equal(events.filter((e) => e === 'ipam release c1/eth0 attempt=attempt-1').length, tries);
  });

  it('waits for a veth deletion in progress before giving the pod its address', async () => {
    const { useCases, world, events } = setup();
    await useCases.attach(pod('old'));
    let deleted!: () => void;
    world.kernel.holdDetach = new Promise((r) => (deleted = r));
    const detaching = useCases.detach({ containerId: 'old', ifname: 'eth0', netns: NETNS });
    await settle();
    const attaching = useCases.attach(pod('new'));
    await settle();
    const host = world.kernel.hostIfname('new', 'eth0');
    assert.ok(events.includes(`kernel create ${host}`));
    assert.ok(!events.some((e) => e.startsWith(`kernel address ${host}`)));
    deleted();
    await Promise.all([detaching, attaching]);
    assert.ok(
      events.indexOf(`kernel deleted ${world.kernel.hostIfname('old', 'eth0')}`) <
        events.findIndex((e) => e.startsWith(`kernel address ${host}`)),
    );
  });

  it("a container's second interface routes in its own table (no routes in the result) and the container is reported with both addresses", async () => {
    const { useCases, world, events } = setup();
    await useCases.attach(pod('c1', 'eth0'));
    const second = await useCases.attach(pod('c1', 'net1'));
    assert.deepEqual(second.routes, []);
    assert.deepEqual(world.kernel.links.get(world.kernel.hostIfname('c1', 'net1'))?.record, {
      network: 'weft',
      containerId: 'c1',
      defaultRoute: false,
    });
    await settle();
    assert.equal(events.filter((e) => e.startsWith('report')).at(-1), 'report attached c1 10.244.0.1,10.244.0.2');
  });
});

describe('detach', () => {
  it('removes the veth and releases the handle at once, waits for the policy pass, then answers; the report follows', async () => {
    const { useCases, world, events, phases } = setup();
    await useCases.attach(pod());
    await settle();
    events.length = 0;
    phases.length = 0;
    await useCases.detach(where);
    const host = world.kernel.hostIfname('c1', 'eth0');
    // The release and the deletion go out at once; the pass follows both.
    assert.deepEqual(events.slice(0, 2).sort(), [`kernel delete ${host}`, 'ipam release c1/eth0'].sort());
    assert.deepEqual(events.slice(2), [`kernel deleted ${host}`, 'policy pass']);
    assert.deepEqual(phases.sort(), ['detach link', 'detach policy', 'detach release']);
    await settle();
    assert.equal(events.at(-1), 'report detached c1');
    assert.equal(world.ipam.held.size, 0);
  });

  it('is idempotent: a DEL of what is gone succeeds', async () => {
    const { useCases } = setup();
    await useCases.detach(where);
    await useCases.detach(where);
  });

  it('answers after POLICY_PASS_WAIT_MS when the policy pass does not finish, without the policy phase', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { useCases, world, phases } = setup();
    world.policy.holdPass = new Promise(() => {});
    let answered = false;
    const del = useCases.detach(where).then(() => (answered = true));
    await settle();
    assert.equal(answered, false);
    t.mock.timers.tick(POLICY_PASS_WAIT_MS);
    await del;
    assert.ok(!phases.includes('detach policy'));
    assert.ok(world.logger.lines.some((l) => l.level === 'warn' && l.waitedMs === POLICY_PASS_WAIT_MS));
  });

  it('waits for an ADD of the same interface still running, and removes what it made', async () => {
    const { useCases, world, events } = setup();
    let answer!: (a: { ipv4: string }) => void;
    world.ipam.nextAllocate = () => new Promise((r) => (answer = r));
    const add = useCases.attach(pod());
    await settle();
    const del = useCases.detach(where);
    await settle();
    assert.ok(!events.includes('ipam release c1/eth0'));
    answer({ ipv4: '10.244.0.5' });
    await add;
    await del;
    assert.equal(world.kernel.links.size, 0);
    assert.equal(world.ipam.held.size, 0);
  });

  it("fences a failed ADD's attempt before its release, and says to try DEL again while IPAM stays unreachable", async () => {
    const { useCases, world, events } = setup();
    world.ipam.nextAllocate = async () => {
      world.ipam.down = unavailable();
      throw world.ipam.down;
    };
    await rejectsWith(useCases.attach(pod()), 'agent.ipam_unavailable', 'unavailable');
    await rejectsWith(
      useCases.detach(where),
      'agent.ipam_unavailable',
      'unavailable',
      /cannot fence the allocation attempts of an earlier failed ADD of c1\/eth0 \(IPAM unreachable\); try DEL again later/,
    );
    world.ipam.down = undefined;
    events.length = 0;
    await useCases.detach(where);
    const releases = events.filter((e) => e.startsWith('ipam release'));
    assert.deepEqual(releases, ['ipam release c1/eth0 attempt=attempt-1', 'ipam release c1/eth0']);
  });

  it('with pending releases, a DEL while IPAM is unreachable succeeds and its release is taken once IPAM is back; an ADD of the handle meanwhile settles it first', async () => {
    const world = createFakeWorld();
    const pending = createPendingReleases({
      release: (h, a) => world.ipam.release(h, a),
      file: null,
      logger: world.logger,
      retry: { baseMs: 60_000, capMs: 60_000 },
    });
    try {
      const { useCases } = setup({ world, pendingReleases: pending });
      await useCases.attach(pod());
      world.ipam.down = unavailable('connect ECONNREFUSED');
      await useCases.detach(where);
      assert.ok(pending.has('c1/eth0'), 'the release is recorded');
      assert.ok(world.ipam.held.has('c1/eth0'), 'IPAM still holds the address: nobody else is given it');
      assert.equal(world.kernel.links.size, 0, 'the veth is gone');
      // An ADD of the same handle while IPAM is still down: the release cannot be settled, so the ADD says try later.
      await rejectsWith(useCases.attach(pod()), 'agent.ipam_unavailable', 'unavailable', /not yet taken by IPAM/);
      world.ipam.down = undefined;
      await useCases.attach(pod());
      assert.ok(!pending.has('c1/eth0'), 'the ADD settled the release before allocating');
      assert.ok(world.ipam.held.has('c1/eth0'), 'and then holds a fresh allocation');
    } finally {
      pending.stop();
    }
  });

  it("IPAM's failure to release is the agent's UNAVAILABLE, and a policy pass still follows", async () => {
    const { useCases, world } = setup();
    world.ipam.down = unavailable('deadline exceeded');
    await rejectsWith(
      useCases.detach(where),
      'agent.ipam_unavailable',
      'unavailable',
      /is unavailable now \(deadline exceeded\); try again later$/,
    );
    await settle();
    assert.equal(world.policy.passes, 1);
  });

  it('a container keeping another interface is reported with what it still holds', async () => {
    const { useCases, events } = setup();
    await useCases.attach(pod('c1', 'eth0'));
    await useCases.attach(pod('c1', 'net1'));
    await useCases.detach({ containerId: 'c1', ifname: 'net1', netns: NETNS });
    await settle();
    assert.equal(events.filter((e) => e.startsWith('report')).at(-1), 'report attached c1 10.244.0.1');
  });
});

describe('check', () => {
  it('names the first difference as FAILED_PRECONDITION agent.check_failed', async () => {
    const { useCases } = setup();
    await rejectsWith(
      useCases.check({ ...where, reportedAddresses: [], reportedMac: '' }),
      'agent.check_failed',
      'failed_precondition',
      /IPAM holds no address for handle c1\/eth0 on node node-a/,
    );
  });

  it("IPAM's failure to list is the agent's", async () => {
    const { useCases, world } = setup();
    world.ipam.down = unavailable();
    await rejectsWith(
      useCases.check({ ...where, reportedAddresses: [], reportedMac: '' }),
      'agent.ipam_unavailable',
      'unavailable',
    );
  });
});

describe('attachment events', () => {
  it('tell the pod drivers of each veth being made, made, ended and removed, by ADD, DEL and GC', async () => {
    const { useCases, world } = setup();
    const told = world.attachments.told;
    const veth = (c: string) => world.kernel.hostIfname(c, 'eth0');
    await useCases.attach(pod('a'));
    assert.deepEqual(told, [`attaching ${veth('a')}`, `attached ${veth('a')} 10.244.0.1`, `ended ${veth('a')}`]);
    told.length = 0;
    world.kernel.failAttach = 'boom';
    await assert.rejects(useCases.attach(pod('b')));
    assert.deepEqual(told, [`attaching ${veth('b')}`, `ended ${veth('b')}`]);
    told.length = 0;
    await useCases.detach({ containerId: 'a', ifname: 'eth0', netns: NETNS });
    assert.deepEqual(told, [`detached ${veth('a')}`]);
    told.length = 0;
    await useCases.attach(pod('stale'));
    world.ipam.held.set('gone/eth0', { containerId: 'gone', ipv4: '10.244.0.70', podNamespace: '', podName: '' });
    told.length = 0;
    await useCases.garbageCollect({ network: 'weft', validAttachments: [] });
    assert.deepEqual(told.sort(), [
      `detached ${veth('gone')}`,
      `detached ${veth('stale')}`,
      `detached ${veth('stale')}`,
    ]);
  });
});

describe('status', () => {
  it('says whether IPAM answers, and where it is when it does not', async () => {
    const { useCases, world } = setup();
    assert.deepEqual(await useCases.status(), { ipamReachable: true, detail: '' });
    world.ipam.down = unavailable('connect ECONNREFUSED');
    assert.deepEqual(await useCases.status(), {
      ipamReachable: false,
      detail: 'the agent cannot reach IPAM at fake-ipam:7400: connect ECONNREFUSED',
    });
  });
});

describe('garbage collection', () => {
  it('removes the veths and releases the handles of attachments the runtime no longer holds, sparing valid ones', async () => {
    const { useCases, world, events } = setup();
    await useCases.attach(pod('keep'));
    await useCases.attach(pod('stale'));
    world.ipam.held.set('crashed/eth0', { containerId: 'crashed', ipv4: '10.244.0.50', podNamespace: '', podName: '' });
    await settle();
    events.length = 0;
    const r = await useCases.garbageCollect({
      network: 'weft',
      validAttachments: [{ containerId: 'keep', ifname: 'eth0' }],
    });
    assert.deepEqual(r.removedInterfaces, [world.kernel.hostIfname('stale', 'eth0')]);
    assert.deepEqual(
      r.released.sort((a, b) => a.handle.localeCompare(b.handle)),
      [
        { handle: 'crashed/eth0', address: '10.244.0.50' },
        { handle: 'stale/eth0', address: '10.244.0.2' },
      ],
    );
    assert.deepEqual(r.failures, []);
    assert.deepEqual([...world.ipam.held.keys()], ['keep/eth0']);
    assert.ok(events.includes('policy pass'));
    await settle();
    assert.deepEqual(events.filter((e) => e.startsWith('report')).sort(), [
      'report detached crashed',
      'report detached stale',
    ]);
  });

  it('never touches an attachment whose ADD is running', async () => {
    const { useCases, world } = setup();
    let answer!: (a: { ipv4: string }) => void;
    world.ipam.nextAllocate = () => new Promise((r) => (answer = r));
    const add = useCases.attach(pod('adding'));
    await settle();
    world.ipam.held.set('adding/eth0', { containerId: 'adding', ipv4: '10.244.0.60', podNamespace: '', podName: '' });
    const r = await useCases.garbageCollect({ network: 'weft', validAttachments: [] });
    assert.deepEqual(r, { released: [], removedInterfaces: [], failures: [] });
    answer({ ipv4: '10.244.0.60' });
    await add;
  });

  it('a failed listing releases nothing and says so; a failed release is a failure, not an error', async () => {
    const { useCases, world } = setup();
    await useCases.attach(pod('stale'));
    world.ipam.down = unavailable('no route');
    const r = await useCases.garbageCollect({ network: 'weft', validAttachments: [] });
    assert.deepEqual(r.released, []);
    assert.equal(r.failures.length, 1);
    assert.match(
      r.failures[0]!,
      /^listing node node-a's allocations failed, so no address was released .*: IPAM( at \S+)? is unavailable now \(no route\); try again later$/,
    );
    world.ipam.down = undefined;
    const release = world.ipam.release;
    world.ipam.release = async () => {
      throw new IpamCallError(
        'unavailable',
        undefined,
        'deadline exceeded',
        true,
        '4 DEADLINE_EXCEEDED: deadline exceeded',
      );
    };
    world.kernel.links.clear();
    const r2 = await useCases.garbageCollect({ network: 'weft', validAttachments: [] });
    assert.deepEqual(r2.failures, ['releasing 10.244.0.1 (handle stale/eth0) failed: deadline exceeded']);
    world.ipam.release = release;
  });
});
