import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createLogger, silentLogger } from '../../lib/logger.js';
import type { WatchRoutesResponse } from '../../gen/weft/routes/v1/routes.js';
import { followRoutes, type RoutesSnapshot } from './routes-watch.js';

const entry = (node: string, i: number) => ({
  node,
  underlayAddress: `192.0.2.${i}`,
  vtepMac: `02:00:c0:00:02:0${i}`,
  blockCidrs: [`10.244.${i}.0/26`],
});
const msg = (m: Partial<WatchRoutesResponse> & { revision: number }): WatchRoutesResponse => ({
  reset: false,
  upserts: [],
  deletes: [],
  bookmark: false,
  more: false,
  ...m,
});

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
      client,
      node: 'self',
      logger: silentLogger,
      signal: ac.signal,
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
  const { snap, requests } = await run(
    [
      [
        msg({ revision: 5, reset: true, upserts: [entry('a', 1), entry('b', 2)] }),
        msg({ revision: 6, upserts: [entry('c', 3)] }),
      ],
      [
        msg({ revision: 7, deletes: ['a'] }),
        msg({ revision: 7, bookmark: true }),
        msg({ revision: 8, upserts: [entry('d', 4)] }),
      ],
    ],
    (s) => s.revision === 8,
  );
  assert.deepEqual(
    requests.map((r) => r.sinceRevision),
    [0, 6],
  );
  assert.deepEqual([...snap.nodes.keys()].sort(), ['b', 'c', 'd']);
  assert.equal(snap.synced, true);
});

test('a snapshot on reconnect replaces what was held; bookmarks move the resume point', async () => {
  const { snap, requests } = await run(
    [
      [msg({ revision: 5, reset: true, upserts: [entry('a', 1)] }), msg({ revision: 9, bookmark: true })],
      [msg({ revision: 40, reset: true, upserts: [entry('z', 9)] })],
    ],
    (s) => s.revision === 40,
  );
  assert.deepEqual(
    requests.map((r) => r.sinceRevision),
    [0, 9],
  );
  assert.deepEqual([...snap.nodes.keys()], ['z']);
});

test('nothing applies before the first snapshot: changes and bookmarks that come first are ignored', async () => {
  const { seen, requests } = await run(
    [
      [
        msg({ revision: 3, upserts: [entry('x', 1)] }),
        msg({ revision: 4, bookmark: true }),
        msg({ revision: 5, reset: true, upserts: [entry('a', 1)] }),
      ],
    ],
    (s) => s.synced,
  );
  assert.deepEqual(seen, [{ revision: 5, nodes: ['a'], synced: true }]);
  assert.deepEqual(
    requests.map((r) => r.sinceRevision),
    [0],
  );
});

test('a route stream entry with a bad field is refused whole and logged; the other nodes are applied', async () => {
  const errors: string[] = [];
  const logger = createLogger(
    {},
    {
      write: (line) => {
        if (JSON.parse(line).level === 'error') errors.push(line);
      },
    },
  );
  const ac = new AbortController();
  const { client } = scriptedClient([
    [
      msg({
        revision: 5,
        reset: true,
        upserts: [
          entry('a', 1),
          { ...entry('b', 2), blockCidrs: ['10.244.2.0/26', '10.0.0.0/8 -j ACCEPT'] },
          { ...entry('c', 3), underlayAddress: '192.0.2.3\nx' },
          { ...entry('d', 4), vtepMac: 'not-a-mac' },
          { ...entry('e', 5), underlayAddress: 'fd00::5' },
          { ...entry('f\nACCEPT', 6) },
        ],
      }),
    ],
  ]);
  let snap!: RoutesSnapshot;
  await new Promise<void>((resolve) => {
    snap = followRoutes({ client, node: 'self', logger, signal: ac.signal, onChange: () => resolve() });
  });
  ac.abort();
  assert.deepEqual([...snap.nodes.keys()], ['a'], 'only the good node is held');
  assert.deepEqual(snap.nodes.get('a'), entry('a', 1));
  assert.equal(errors.length, 5, errors.join('\n'));
  assert.ok(
    errors.some(
      (l) => JSON.parse(l).node === 'b' && /10\.0\.0\.0\/8 -j ACCEPT.* is not a CIDR/.test(JSON.parse(l).reason),
    ),
    errors.join('\n'),
  );
});
