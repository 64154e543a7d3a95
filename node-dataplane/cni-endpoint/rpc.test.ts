import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DomainError } from '../../lib/errors.js';
import { createCniRpc } from './rpc.js';
import type { CniUseCases } from './use-cases.js';
import type { CallContext } from '../../lib/grpc/server.js';

// The RPC adapter refuses malformed requests with INVALID_ARGUMENT `agent.invalid_request`, saying what to fix,
// before any use case runs; well-formed ones are handed on as they are.

const called: string[] = [];
const useCases = {
  attach: async () => (called.push('attach'), { interfaces: [], ips: [], routes: [] }),
  detach: async () => void called.push('detach'),
  check: async () => void called.push('check'),
  status: async () => (called.push('status'), { ipamReachable: true, detail: '' }),
  garbageCollect: async () => (called.push('gc'), { released: [], removedInterfaces: [], failures: [] }),
} as unknown as CniUseCases;
const rpc = (dualStack = false) =>
  createCniRpc(useCases, {
    dualStack,
    checkNetnsPath: (p) => {
      if (p !== '/run/netns/pod') throw new Error(`network namespace ${p} does not exist`);
    },
  });
const ctx = {} as CallContext;
const attachReq = {
  containerId: 'c1',
  netns: '/run/netns/pod',
  ifname: 'eth0',
  podNamespace: '',
  podName: '',
  pool: '',
  requestedAddresses: [] as string[],
  mac: '',
  network: 'weft',
  podUid: '',
};

const invalid = (message: RegExp) => (err: unknown) => {
  assert.ok(err instanceof DomainError);
  assert.equal(err.code, 'agent.invalid_request');
  assert.equal(err.kind, 'invalid_argument');
  assert.match(err.message, message);
  return true;
};

describe('the CNI RPC adapter', () => {
  it('refuses malformed attach requests, saying what to fix, and runs nothing', async () => {
    called.length = 0;
    const bad: [object, RegExp][] = [
      [{ containerId: '' }, /^container id is empty$/],
      [{ containerId: '-x' }, /container id "-x" must start with a letter or digit/],
      [{ containerId: 'a/b' }, /contain only letters, digits/],
      [{ ifname: '' }, /interface name "" must be 1-15 characters/],
      [{ ifname: 'a-very-long-name0' }, /interface name "a-very-long-name0" must be 1-15 characters/],
      [{ ifname: 'eth/0' }, /without spaces, '\/' or ':'/],
      [{ ifname: '..' }, /interface name "\.\."/],
      [{ netns: '/proc/1/ns/nope' }, /^network namespace \/proc\/1\/ns\/nope does not exist$/],
      [{ mac: '0a:58:0a' }, /^MAC "0a:58:0a" is not a MAC address$/],
      [
        { requestedAddresses: ['fd00::5'] },
        /requested IPv6 addresses \(fd00::5\) need dual-stack pods.*WEFT_POD_FAMILIES=ipv4/,
      ],
    ];
    for (const [change, message] of bad)
      await assert.rejects(rpc().attach({ ...attachReq, ...change }, ctx), invalid(message));
    assert.deepEqual(called, []);
  });

  it('hands well-formed requests on', async () => {
    called.length = 0;
    await rpc().attach({ ...attachReq, mac: '0A:58:0a:f4:00:05', requestedAddresses: ['10.244.0.5'] }, ctx);
    await rpc(true).attach({ ...attachReq, requestedAddresses: ['fd00::5'] }, ctx);
    assert.deepEqual(await rpc().detach({ containerId: 'c1', ifname: 'eth0', netns: '' }, ctx), {});
    assert.deepEqual(
      await rpc().check({ containerId: 'c1', ifname: 'eth0', netns: '', reportedAddresses: [], reportedMac: '' }, ctx),
      {},
    );
    await rpc().status({}, ctx);
    await rpc().garbageCollect({ network: 'weft', validAttachments: [{ containerId: 'c1', ifname: 'eth0' }] }, ctx);
    assert.deepEqual(called, ['attach', 'attach', 'detach', 'check', 'status', 'gc']);
  });

  it('refuses a detach, check or GC that names no attachment', async () => {
    await assert.rejects(
      rpc().detach({ containerId: '', ifname: 'eth0', netns: '' }, ctx),
      invalid(/^container id is empty$/),
    );
    await assert.rejects(
      rpc().detach({ containerId: 'c1', ifname: '', netns: '' }, ctx),
      invalid(/^interface name is empty$/),
    );
    await assert.rejects(
      rpc().check({ containerId: 'c 1', ifname: 'eth0', netns: '', reportedAddresses: [], reportedMac: '' }, ctx),
      invalid(/container id "c 1"/),
    );
    await assert.rejects(
      rpc().garbageCollect({ network: 'weft', validAttachments: [{ containerId: 'c1', ifname: '' }] }, ctx),
      invalid(/a valid attachment needs a container id and an interface name/),
    );
  });
});
