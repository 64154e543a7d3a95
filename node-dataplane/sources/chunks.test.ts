import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../lib/logger.js';
import { WatchNodePolicyResponse } from '../../gen/weft/policy/v1/policy.js';
import type { WatchRoutesResponse as RoutesMessage } from '../../gen/weft/routes/v1/routes.js';
import { chunkWatchResponse } from '../../services/policy/rpc/policy.rpc.js';
import { toPbWatchMessages } from '../../services/routes/rpc/routes.rpc.js';
import { createPolicyChunkJoiner, createRoutesChunkJoiner } from './chunks.js';
import { followRoutes, type RoutesSnapshot } from './routes-watch.js';

/** Chunks as the servers cut them and as the agent joins them: the joined message is the message, and a part is never acted on. */
const entry = (i: number) => ({
  node: `node-${i}`,
  underlayAddress: `192.0.2.${i % 250}`,
  vtepMac: '02:00:c0:00:02:0b',
  blockCidrs: [`10.244.${i % 250}.0/26`],
});
const routesMsg = (m: Partial<RoutesMessage> & { revision: number }): RoutesMessage => ({
  reset: false,
  upserts: [],
  deletes: [],
  bookmark: false,
  more: false,
  ...m,
});

test('a routes snapshot of 5,000 nodes is cut into chunks of at most 256 KiB and joins back to itself', () => {
  const snapshot = {
    revision: 9,
    reset: true,
    upserts: Array.from({ length: 5000 }, (_, i) => entry(i)),
    deletes: [],
    bookmark: false,
  };
  const parts = toPbWatchMessages(snapshot, true);
  assert.ok(parts.length > 1);
  assert.deepEqual(
    parts.map((p) => p.more),
    [...parts.slice(1).map(() => true), false],
  );
  assert.ok(parts.every((p) => p.reset && p.revision === 9));
  const joiner = createRoutesChunkJoiner();
  const joined = parts.map((p) => joiner.push(p));
  assert.ok(
    joined.slice(0, -1).every((j) => j === null),
    'nothing whole before the last chunk',
  );
  assert.deepEqual(joined.at(-1), { ...snapshot, more: false });
  assert.deepEqual(
    toPbWatchMessages(snapshot, false),
    [{ ...snapshot, more: false }],
    'a watcher that does not join chunks gets the whole message',
  );
});

test('a policy message with a 300,000-address set is cut into chunks under the budget, the set spanning them under its one name', () => {
  const cidrs = Array.from({ length: 300_000 }, (_, i) => `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}/32`);
  const m: WatchNodePolicyResponse = {
    revision: 4,
    bookmark: false,
    delta: true,
    more: false,
    pods: [
      {
        namespace: 'x',
        name: 'web',
        addresses: ['10.244.0.5'],
        ingress: [
          {
            tier: 'networkpolicy',
            action: 'allow',
            peerSet: 'weft-big',
            protocol: '',
            portFrom: 0,
            portTo: 0,
            source: 'NetworkPolicy/x/web ingress[0]',
          },
        ],
        egress: [],
      },
    ],
    sets: [
      { name: 'weft-small', cidrs: ['10.9.9.9/32'] },
      { name: 'weft-big', cidrs },
    ],
    removedPods: ['x/old'],
    removedSets: ['weft-gone'],
  };
  const parts = chunkWatchResponse(m);
  assert.ok(parts.length > 10);
  for (const p of parts)
    assert.ok(WatchNodePolicyResponse.encode(p).finish().length <= 256 * 1024, 'every chunk within the budget');
  assert.ok(parts.every((p) => p.delta && p.revision === 4));
  const joiner = createPolicyChunkJoiner();
  const joined = parts.map((p) => joiner.push(p));
  assert.ok(joined.slice(0, -1).every((j) => j === null));
  assert.deepEqual(joined.at(-1), m);
  assert.deepEqual(chunkWatchResponse({ ...m, sets: [] }), [{ ...m, sets: [] }], 'a message that fits goes whole');
});

test("a stream that breaks mid-snapshot leaves nothing applied; the next stream's snapshot is applied whole", async () => {
  const table = Array.from({ length: 6 }, (_, i) => entry(i));
  const cut = (upserts: typeof table, revision: number) =>
    upserts.map((u, i) => routesMsg({ revision, reset: true, upserts: [u], more: i < upserts.length - 1 }));
  const streams = [cut(table, 5).slice(0, 3), cut(table.slice(1), 7)];
  const requests: { acceptChunks?: boolean }[] = [];
  const client = {
    watchRoutes(req: { acceptChunks?: boolean }) {
      requests.push(req);
      const script = streams.shift();
      return (async function* () {
        if (!script) return await new Promise<never>(() => {});
        for (const m of script) yield m;
        throw new Error('connection reset');
      })();
    },
  };
  const ac = new AbortController();
  const seen: string[][] = [];
  await new Promise<RoutesSnapshot>((resolve) => {
    followRoutes({
      client: client as never,
      node: 'self',
      logger: silentLogger,
      signal: ac.signal,
      onChange: (s) => {
        seen.push([...s.nodes.keys()]);
        resolve(s);
      },
    });
  });
  ac.abort();
  assert.deepEqual(
    seen,
    [table.slice(1).map((u) => u.node)],
    "only the whole snapshot of the second stream, none of the first stream's part",
  );
  assert.ok(requests.every((r) => r.acceptChunks));
});

test('a policy part of a broken stream is dropped when the stream reopens', () => {
  const joiner = createPolicyChunkJoiner();
  const part = {
    revision: 1,
    bookmark: false,
    delta: false,
    pods: [],
    sets: [{ name: 's', cidrs: ['10.0.0.1/32'] }],
    removedPods: [],
    removedSets: [],
    more: true,
  };
  assert.equal(joiner.push(part), null);
  joiner.reset();
  const whole = { ...part, sets: [{ name: 's', cidrs: ['10.0.0.2/32'] }], more: false };
  assert.deepEqual(joiner.push(whole)!.sets, [{ name: 's', cidrs: ['10.0.0.2/32'] }]);
});
