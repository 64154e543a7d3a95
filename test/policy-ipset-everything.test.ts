import { test } from 'node:test';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rangesToCidrs } from '../services/policy/domain/compile.js';
import { privilegedOrSkip } from './support/privileges.js';

// A policy allowing every address (ipBlock 0.0.0.0/0, a common egress rule) compiles to a set the kernel takes:
// ipset's hash:net refuses a /0, and one refused member fails the node's whole `ipset restore`.
test('in the kernel: the set of every address loads into ipset hash:net, for both families', privilegedOrSkip(), () => {
  const ns = `wevery${randomBytes(3).toString('hex')}`;
  execFileSync('ip', ['netns', 'add', ns]);
  try {
    for (const family of [4, 6] as const) {
      const members = rangesToCidrs([{ family, start: 0n, end: (1n << BigInt(family === 4 ? 32 : 128)) - 1n }]);
      const name = `weft-every${family}`;
      const input = [
        `create ${name} hash:net family ${family === 4 ? 'inet' : 'inet6'}`,
        ...members.map((m) => `add ${name} ${m}`),
        '',
      ].join('\n');
      execFileSync('ip', ['netns', 'exec', ns, 'ipset', 'restore', '-exist'], { input });
      const probe = family === 4 ? ['203.0.113.9', '10.244.1.2'] : ['2001:db8::1', 'fd00:10:244::5'];
      for (const a of probe) execFileSync('ip', ['netns', 'exec', ns, 'ipset', 'test', name, a], { stdio: 'ignore' });
    }
  } finally {
    execFileSync('ip', ['netns', 'del', ns]);
  }
});
