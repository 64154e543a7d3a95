import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../lib/logger.js';
import type { HostAttachment } from '../domain/pod-host.js';
import { followAttachments } from './attachments.js';

const a = (name: string, ...addresses: string[]): [string, HostAttachment] => [name, { hostIfname: name, addresses }];

test("unknown until IPAM answers (retried); then IPAM's attachments, with the ADDs and DELs made while it was asked applied over its answer", async () => {
  const stop = new AbortController();
  let answer!: (m: Map<string, HostAttachment>) => void;
  let calls = 0;
  let changes = 0;
  const src = followAttachments({
    list: () => {
      calls++;
      if (calls === 1) return Promise.reject(new Error('UNAVAILABLE: no connection'));
      return new Promise((r) => (answer = r));
    },
    logger: silentLogger,
    signal: stop.signal,
    onChange: () => changes++,
    retryMs: 1,
  });
  try {
    // An ADD ends and a DEL runs while IPAM cannot be asked, and while the listing is on its way.
    src.events.attaching('weft0000000000c');
    assert.equal(src.attaching('weft0000000000c'), true);
    src.events.attached(a('weft0000000000c', '10.244.0.12')[1]);
    src.events.attachEnded('weft0000000000c');
    assert.equal(src.attaching('weft0000000000c'), false);
    assert.equal(src.attachments(), null, 'unknown: the pod drivers leave the kernel as it is');
    while (calls < 2) await new Promise((r) => setTimeout(r, 2));
    src.events.detached('weft0000000000a');
    // IPAM's answer was read before the ADD committed and before the DEL released.
    answer(new Map([a('weft0000000000a', '10.244.0.10'), a('weft0000000000b', '10.244.0.11', 'fd00:10:244::b')]));
    await new Promise((r) => setImmediate(r));
    assert.deepEqual([...src.attachments()!.keys()].sort(), ['weft0000000000b', 'weft0000000000c']);
    assert.equal(changes, 1);
    // From now on each change applies at once.
    src.events.detached('weft0000000000b');
    src.events.attached(a('weft0000000000d', '10.244.0.13')[1]);
    assert.deepEqual([...src.attachments()!.keys()].sort(), ['weft0000000000c', 'weft0000000000d']);
    assert.equal(calls, 2, 'IPAM is asked once');
  } finally {
    stop.abort();
  }
});
