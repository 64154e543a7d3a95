import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '../lib/grpc/client.js';
import { silentLogger } from '../lib/logger.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { masqueradeRules } from '../node-dataplane/domain/masquerade.js';
import { followPools } from '../node-dataplane/sources/pools-watch.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/** The agent's pool source against the real IPAM on real PostgreSQL. */
let cp: TestControlPlane;
let ipam: ReturnType<typeof createClient<typeof IpamServiceService>>;

before(async () => {
  cp = await startTestControlPlane();
  ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
});
after(async () => {
  ipam?.close();
  await cp?.stop();
});

test('the agent masquerades traffic to pods of pools past the first 100: its pool source reads every page of ListPools', async () => {
  // 130 pools: ListPools answers 100 per page by default, so 30 are on a second page.
  const cidrs = Array.from({ length: 130 }, (_, i) => `10.${i}.0.0/16`);
  for (let i = 0; i < cidrs.length; i++)
    await ipam.createPool({ name: `pool${String(i).padStart(3, '0')}`, cidr: cidrs[i]!, blockPrefixLength: 26 });
  const stopper = new AbortController();
  let changes = 0;
  const source = followPools({
    ipam,
    intervalMs: 60_000,
    logger: silentLogger,
    signal: stopper.signal,
    onChange: () => changes++,
  });
  try {
    const t0 = Date.now();
    while (source.pools() === null) {
      assert.ok(Date.now() - t0 < 10_000, 'the pools are known within 10 s');
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual(source.pools(), [...cidrs].sort(), 'every pool, also those past the first page');
    assert.equal(changes, 1, 'one change for the first complete list');
    const rules = masqueradeRules(source.pools()!);
    assert.ok(
      rules.includes('-A WEFT-POSTROUTING -d 10.129.0.0/16 -j RETURN'),
      'traffic to a pod of the 130th pool keeps its source',
    );
    assert.equal(rules.filter((r) => r.endsWith('-j RETURN')).length, 130);
  } finally {
    stopper.abort();
  }
});
