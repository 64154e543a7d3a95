import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startIpamTestbed, type IpamTestbed } from './support/control-plane.js';

/**
 * A new database's first minutes: the IPAM sweeper's leader has PostgreSQL analyze the tables as they fill (every few
 * seconds, ipam.refresh_statistics), so the plans sessions made while they were empty are made again without waiting
 * for autovacuum (store/planner-statistics.test.ts shows the plan it replaces). Autovacuum is off for the tables
 * here: only the service can have analyzed them.
 */
let tb: IpamTestbed;
before(async () => {
  tb = await startIpamTestbed();
  for (const t of ['allocations', 'blocks', 'allocation_attempts', 'node_usage'])
    await tb.sql.query(`ALTER TABLE ipam.${t} SET (autovacuum_enabled = false)`);
});
after(async () => {
  await tb?.stop();
});

describe('planner statistics in a new database', () => {
  test('the service analyzes the allocations within seconds of their first hundred rows, without autovacuum', async () => {
    await tb.ipam.createPool({ name: 'fill', cidr: '10.77.0.0/16', blockPrefixLength: 26 });
    const analyzed = async () =>
      (
        await tb.sql.query<{ n: number }>(
          `SELECT analyze_count::int AS n FROM pg_stat_user_tables WHERE relid = 'ipam.allocations'::regclass`,
        )
      ).rows[0]!.n;
    assert.equal(await analyzed(), 0, 'a new database: nothing analyzed yet');
    for (let n = 0; n < 4; n++)
      await Promise.all(
        Array.from({ length: 30 }, (_, k) =>
          tb.ipam.allocate({
            handle: `s${n}-${k}/eth0`,
            node: `n${n}`,
            pool: 'fill',
            podNamespace: 'ns',
            podName: `s${n}-${k}`,
            containerId: `s${n}-${k}`,
          }),
        ),
      );
    // Sessions report their row counts to the statistics views within a second while busy, within ten once idle
    // (PostgreSQL's pgstat intervals); the leader looks every five.
    const deadline = Date.now() + 30_000;
    while ((await analyzed()) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
    assert.ok((await analyzed()) > 0, 'the allocations were analyzed by the service');
  });
});
