import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../lib/logger.js';
import type { DetectedUnderlay } from './kernel/underlay.js';
import { followUnderlay } from './underlay-follow.js';

const u = (address: string, over: Partial<DetectedUnderlay> = {}) =>
  ({ address, prefixLength: 24, interface: 'eth0', ifindex: 2, mtu: 1500, by: 'cidr', ...over }) as DetectedUnderlay;
const settle = () => new Promise((r) => setTimeout(r, 30));

test('the underlay is detected again on a poke: a change is handed over once, a burst costs one detection, a failure keeps the current one', async () => {
  let seen: DetectedUnderlay = u('192.0.2.11');
  let detections = 0;
  let fail = false;
  const moves: string[] = [];
  const f = followUnderlay({
    initial: u('192.0.2.11'),
    detect: async () => {
      detections++;
      if (fail) throw new Error('no address in 192.0.2.0/24');
      return seen;
    },
    onMoved: async (next, prev) => {
      moves.push(`${prev.address} -> ${next.address}`);
    },
    logger: silentLogger,
    intervalMs: 60_000,
    debounceMs: 5,
  });
  f.poke();
  await settle();
  assert.deepEqual(moves, [], 'unchanged: nothing to do');
  seen = u('192.0.2.63');
  for (let i = 0; i < 10; i++) f.poke();
  await settle();
  assert.deepEqual(moves, ['192.0.2.11 -> 192.0.2.63']);
  assert.equal(detections, 2, 'ten pokes in a burst, one detection');
  assert.equal(f.current().address, '192.0.2.63');
  fail = true;
  f.poke();
  await settle();
  assert.equal(f.current().address, '192.0.2.63', 'a failed detection keeps the current underlay');
  fail = false;
  seen = u('192.0.2.63', { mtu: 9000 });
  f.poke();
  await settle();
  assert.deepEqual(moves, ['192.0.2.11 -> 192.0.2.63', '192.0.2.63 -> 192.0.2.63'], 'an MTU change counts');
  f.close();
});
