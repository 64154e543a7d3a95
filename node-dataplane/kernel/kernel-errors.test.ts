/**
 * kernelErrorKind: the answers of the netlink package, iproute2, iptables and ipset sorted into "not found", "exists"
 * and anything else. The unit tests hold the tools' words as they print them (iproute2 6.1, iptables 1.8.9, ipset
 * 7.17); the privileged test makes each failure for real in a throwaway namespace, so a tool that words it
 * differently fails here rather than in a DEL that stops being idempotent.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { createRequire } from 'node:module';
import { CommandError, run } from '../../lib/exec.js';
import { privilegedOrSkip } from '../../test/support/privileges.js';
import { isExists, isNotFound, kernelErrorKind } from './kernel-errors.js';

const failed = (command: string, stderr: string) => new CommandError(command, 1, stderr);

describe('kernelErrorKind', () => {
  it('netlink: ENOENT, ESRCH and ENODEV are not-found, EEXIST is exists, other errnos are neither', () => {
    for (const name of ['ENOENT', 'ESRCH', 'ENODEV'])
      assert.equal(kernelErrorKind(new Error(`Request rejected: ${name}`)), 'not-found', name);
    assert.equal(kernelErrorKind(new Error('Request rejected: EEXIST')), 'exists');
    assert.equal(kernelErrorKind(new Error('Request rejected: -17')), 'exists', 'an errno Node could not name');
    for (const name of ['EPERM', 'EINVAL', 'EBUSY', 'ENOBUFS'])
      assert.equal(kernelErrorKind(new Error(`Request rejected: ${name}`)), null, name);
  });

  it('iproute2: a missing device, table or entry is not-found; an entry or address already there is exists', () => {
    assert.ok(isNotFound(failed('ip -j -d link show dev weft1', 'Device "weft1" does not exist.\n')));
    assert.ok(isNotFound(failed('ip link del dev weft1', 'Cannot find device "weft1"\n')));
    assert.ok(isNotFound(failed('ip route del 10.7.0.0/24', 'Error: FIB table does not exist.\n')));
    assert.ok(isNotFound(failed('ip route del 10.7.0.0/24', 'RTNETLINK answers: No such process\n')));
    assert.ok(isNotFound(failed('ip neigh del 10.8.0.9 dev d0', 'RTNETLINK answers: No such file or directory\n')));
    assert.ok(isExists(failed('ip link add d0 type veth peer name d1', 'RTNETLINK answers: File exists\n')));
    assert.ok(isExists(failed('ip addr add 10.9.0.1/24 dev d0', 'Error: ipv4: Address already assigned.\n')));
  });

  it('iptables and ipset: missing chains, rules, sets and members are not-found; existing ones are exists', () => {
    assert.ok(isNotFound(failed('iptables -F WEFT-NOPE', 'iptables: No chain/target/match by that name.\n')));
    assert.ok(isNotFound(failed('ip6tables -X WEFT-NOPE', 'ip6tables: No chain/target/match by that name.\n')));
    assert.ok(
      isNotFound(
        failed('iptables -D WEFT-X -j ACCEPT', 'iptables: Bad rule (does a matching rule exist in that chain?).\n'),
      ),
    );
    assert.ok(
      isNotFound(failed('ipset destroy weft-nope', 'ipset v7.17: The set with the given name does not exist\n')),
    );
    assert.ok(
      isNotFound(
        failed('ipset del weft-x 10.0.0.1', "ipset v7.17: Element cannot be deleted from the set: it's not added\n"),
      ),
    );
    assert.ok(isExists(failed('iptables -N WEFT-X', 'iptables: Chain already exists.\n')));
    assert.ok(
      isExists(
        failed(
          'ipset create weft-x hash:ip',
          'ipset v7.17: Set cannot be created: set with the same name already exists\n',
        ),
      ),
    );
    assert.ok(
      isExists(
        failed('ipset add weft-x 10.0.0.1', "ipset v7.17: Element cannot be added to the set: it's already added\n"),
      ),
    );
  });

  it('anything else is neither: failures that retrying or ignoring would hide', () => {
    const neither = [
      failed(
        'nsenter --net=/run/netns/gone ip link show dev eth0',
        'nsenter: cannot open /run/netns/gone: No such file or directory\n',
      ),
      failed('ip link add weft1 type veth peer name eth0', 'RTNETLINK answers: Operation not permitted\n'),
      failed('iptables-restore --noflush', 'iptables-restore: line 3 failed\n'),
      failed(
        'ipset restore -exist',
        'ipset v7.17: Error in line 2: Syntax error: cannot parse 10.0.0.300: resolving to IPv4 address failed\n',
      ),
      // `ip` itself missing: spawn's ENOENT is not a missing device.
      Object.assign(new Error('spawn ip ENOENT'), { code: 'ENOENT', syscall: 'spawn ip' }),
      Object.assign(new Error('Request rejected: ENOENT'), { code: 'ENOENT' }),
      new Error('Cannot find device, said nobody in particular'),
      'Request rejected: ENOENT',
      undefined,
    ];
    for (const err of neither) assert.equal(kernelErrorKind(err), null, String((err as Error)?.message ?? err));
  });
});

describe('kernelErrorKind on the real tools, in a throwaway namespace', privilegedOrSkip(), () => {
  const sh = promisify(execFile);
  const ns = `wke${process.pid.toString(36)}`;
  const inNs = (file: string, args: string[]) => run('ip', ['netns', 'exec', ns, file, ...args]);
  const failure = async (p: Promise<unknown>): Promise<unknown> => {
    try {
      await p;
    } catch (err) {
      return err;
    }
    assert.fail('the command succeeded');
  };
  before(async () => {
    await sh('ip', ['netns', 'add', ns]);
    await inNs('ip', ['link', 'add', 'd0', 'type', 'veth', 'peer', 'name', 'd1']);
    await inNs('ip', ['link', 'set', 'd0', 'up']);
    await inNs('ip', ['addr', 'add', '10.9.0.1/24', 'dev', 'd0']);
    await inNs('iptables', ['-N', 'WEFT-X']);
    await inNs('ipset', ['create', 'weft-x', 'hash:ip']);
    await inNs('ipset', ['add', 'weft-x', '10.0.0.1']);
  });
  after(async () => {
    await sh('ip', ['netns', 'del', ns]).catch(() => {});
  });

  it('iproute2, iptables and ipset', async () => {
    const notFound = [
      ['ip', ['-j', '-d', 'link', 'show', 'dev', 'nope']],
      ['ip', ['link', 'del', 'dev', 'nope']],
      ['ip', ['route', 'del', '10.7.0.0/24', 'dev', 'd0']],
      ['ip', ['neigh', 'del', '10.9.0.9', 'dev', 'd0']],
      ['iptables', ['-F', 'WEFT-NOPE']],
      ['iptables', ['-D', 'WEFT-X', '-j', 'ACCEPT']],
      ['ipset', ['destroy', 'weft-nope']],
      ['ipset', ['del', 'weft-x', '10.0.0.2']],
    ] as const;
    for (const [file, args] of notFound) {
      const err = await failure(inNs(file, [...args]));
      assert.equal(kernelErrorKind(err), 'not-found', (err as Error).message);
    }
    const exists = [
      ['ip', ['link', 'add', 'd0', 'type', 'veth', 'peer', 'name', 'd2']],
      ['ip', ['addr', 'add', '10.9.0.1/24', 'dev', 'd0']],
      ['iptables', ['-N', 'WEFT-X']],
      ['ipset', ['create', 'weft-x', 'hash:ip']],
      ['ipset', ['add', 'weft-x', '10.0.0.1']],
    ] as const;
    for (const [file, args] of exists) {
      const err = await failure(inNs(file, [...args]));
      assert.equal(kernelErrorKind(err), 'exists', (err as Error).message);
    }
    const gone = await failure(run('nsenter', [`--net=/run/netns/${ns}-gone`, 'ip', 'link', 'show', 'dev', 'd0']));
    assert.equal(kernelErrorKind(gone), null, 'a namespace that is gone is not a missing device');
  });

  it('the netlink package', async () => {
    // In a child in the namespace (this process stays in its own): what the package rejects with, as JSON.
    const netlink = createRequire(import.meta.url).resolve('netlink');
    const script = `
      const nl = require(${JSON.stringify(netlink)}).createRtNetlink();
      const messages = [];
      const take = (p) => p.then(() => messages.push('succeeded'), (e) => messages.push(e.message));
      (async () => {
        await take(nl.delLink({}, { ifname: 'nope' }));
        await take(nl.delRoute({ family: 2, dstLen: 24, table: 254 }, { dst: Buffer.from([10, 6, 0, 0]) }));
        await take(nl.newLink({}, { ifname: 'd0' }, { flags: 0x400 | 0x200 })); // NLM_F_CREATE | NLM_F_EXCL
        nl.socket.close();
        process.stdout.write(JSON.stringify(messages));
      })();`;
    const messages = JSON.parse(await inNs(process.execPath, ['-e', script])) as string[];
    assert.deepEqual(
      messages.map((m) => kernelErrorKind(new Error(m))),
      ['not-found', 'not-found', 'exists'],
      messages.join('; '),
    );
  });
});
