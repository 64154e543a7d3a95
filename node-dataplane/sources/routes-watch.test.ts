import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../lib/logger.js';
import type { WatchRoutesResponse } from '../../gen/weft/routes/v1/routes.js';
import { followRoutes, type RoutesSnapshot } from './routes-watch.js';

const entry = (node: string, i: number) => ({ node, underlayAddress: `192.0.2.${i}`, vtepMac: `02:00:c0:00:02:0${i}`, blockCidrs: [`10.244.${i}.0/26`] });
const msg = (m: Partial<WatchRoutesResponse> & { revision: number }): WatchRoutesResponse => ({ reset: false, upserts: [], deletes: [], bookmark: false, more: false, ...m });

/** A WatchRoutes client that plays one scripted stream per call, each ending with a broken connection. */
function scriptedClient(streams: WatchRoutesResponse[][]) {
  const requests: { sinceRevision: number }[] = [];
  const client = {
    watchRoutes(req: { sinceRevision?: number }) {
      requests.push({ sinceRevision: req.sinceRevision ?? 0 });
      const script = streams.shift();
      return (async function* () {
        if (!script) return await new Promise<never>(() => {});
        for (const m of script) yield m;
        throw new Error('connection reset');
      })();
    },
  };
  return { client: client as never, requests };
}

async function run(streams: WatchRoutesResponse[][], until: (s: RoutesSnapshot) => boolean) {
  const ac = new AbortController();
  const { client, requests } = scriptedClient(streams);
  const seen: { revision: number; nodes: string[]; synced: boolean }[] = [];
  let snap!: RoutesSnapshot;
  await new Promise<void>((resolve) => {
    snap = followRoutes({
      client, node: 'self', logger: silentLogger, signal: ac.signal,
      onChange: (s) => {
        seen.push({ revision: s.revision, nodes: [...s.nodes.keys()].sort(), synced: s.synced });
        if (until(s)) resolve();
      },
    });
  });
  ac.abort();
  return { snap, requests, seen };
}

test('a reconnect resumes from the last applied revision and applies the missed changes on top of the snapshot', async () => {
  const { snap, requests } = await run([
    [msg({ revision: 5, reset: true, upserts: [entry('a', 1), entry('b', 2)] }), msg({ revision: 6, upserts: [entry('c', 3)] })],
    [msg({ revision: 7, deletes: ['a'] }), msg({ revision: 7, bookmark: true }), msg({ revision: 8, upserts: [entry('d', 4)] })],
  ], (s) => s.revision === 8);
  assert.deepEqual(requests.map((r) => r.sinceRevision), [0, 6]);
  assert.deepEqual([...snap.nodes.keys()].sort(), ['b', 'c', 'd']);
  assert.equal(snap.synced, true);
});

test('a snapshot on reconnect replaces what was held; bookmarks move the resume point', async () => {
  const { snap, requests } = await run([
    [msg({ revision: 5, reset: true, upserts: [entry('a', 1)] }), msg({ revision: 9, bookmark: true })],
    [msg({ revision: 40, reset: true, upserts: [entry('z', 9)] })],
  ], (s) => s.revision === 40);
  assert.deepEqual(requests.map((r) => r.sinceRevision), [0, 9]);
  assert.deepEqual([...snap.nodes.keys()], ['z']);
});

test('nothing applies before the first snapshot: changes and bookmarks that come first are ignored', async () => {
  const { seen, requests } = await run([
    [msg({ revision: 3, upserts: [entry('x', 1)] }), msg({ revision: 4, bookmark: true }), msg({ revision: 5, reset: true, upserts: [entry('a', 1)] })],
  ], (s) => s.synced);
  assert.deepEqual(seen, [{ revision: 5, nodes: ['a'], synced: true }]);
  assert.deepEqual(requests.map((r) => r.sinceRevision), [0]);
});
