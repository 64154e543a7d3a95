import { mkdtempSync, rmSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startEmbeddedPostgres } from '../lib/db/embedded.js';
import { createClient, type PromiseClient } from '../lib/grpc/client.js';
import { createLogger, silentLogger } from '../lib/logger.js';
import { AllocateRequest, IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { startUntil } from '../test/support/processes.js';
import { startWeftUp } from '../test/support/weft-up.js';
import { freePort } from '../test/support/ports.js';
import { readCa } from '../lib/pki.js';
import { startEchoServer } from './grpc-echo.js';
import { fleetPart } from './ipam-fleet.js';
import {
  cpuMeter,
  findPgbench,
  median,
  ms,
  openLoopLatency,
  percentile,
  perSec,
  pgbenchInsertTps,
  printTable,
  type Row,
} from './support.js';

/**
 * bench/ipam: allocation throughput and latency at 1, 8 and 64 concurrent clients over 500 simulated nodes, beside
 * pgbench's rate for a one-row INSERT transaction on the same PostgreSQL in the same run; latency at half load;
 * "who held X at T" with millions of history rows; utilization of a pool with a million live allocations.
 * Every figure is the median of RUNS runs. Knobs (environment): WEFT_BENCH_RUNS (3), WEFT_BENCH_SECONDS (6),
 * WEFT_BENCH_HISTORY_ROWS (5000000), WEFT_BENCH_LIVE_ROWS (1000000), WEFT_BENCH_PARTS (every part: closed, batch, half,
 * history, utilization; a comma-separated subset runs only those), WEFT_BENCH_HALF_RATE (the half-load arrival rate when
 * the closed-loop part does not run to measure it; 816/s, half the last measured 64-client rate).
 * Part `transport`: what mTLS costs. A second control plane (bench/control-plane-transport.ts: `weft up`'s code on the
 * same database) serves one gRPC server on two listeners, mTLS and plaintext; the same callers allocate over each in
 * turn, RUNS times, at 1, 8 and 64 clients.
 * Part `fleet` (not run by default; WEFT_BENCH_PARTS=fleet): 150,000 live pods of 5,000 nodes in 20 clusters, filled
 * through the API under node certificates; churn, history and utilization at that size (bench/ipam-fleet.ts).
 */
const RUNS = Number(process.env.WEFT_BENCH_RUNS ?? 3);
const SECONDS = Number(process.env.WEFT_BENCH_SECONDS ?? 6);
const HISTORY_ROWS = Number(process.env.WEFT_BENCH_HISTORY_ROWS ?? 5_000_000);
const LIVE_ROWS = Number(process.env.WEFT_BENCH_LIVE_ROWS ?? 1_000_000);
const PARTS = new Set(
  (process.env.WEFT_BENCH_PARTS ?? 'closed,transport,batch,half,history,utilization').split(',').map((x) => x.trim()),
);
const NODES = 500;
type Ipam = PromiseClient<typeof IpamServiceService>;

let handleSeq = 0;

/** Closed loop: `clients` callers, each allocating as fast as it can for `seconds`. */
async function closedLoop(clients: Ipam[], seconds: number) {
  const lat: number[] = [];
  const end = performance.now() + seconds * 1000;
  await Promise.all(
    clients.map(async (c) => {
      while (performance.now() < end) {
        const t0 = performance.now();
        await c.allocate({
          handle: `b${handleSeq++}/eth0`,
          node: `bn-${Math.floor(Math.random() * NODES)}`,
          pool: 'bench',
        });
        lat.push(performance.now() - t0);
      }
    }),
  );
  lat.sort((a, b) => a - b);
  return {
    rate: lat.length / seconds,
    p50: percentile(lat, 50),
    p99: percentile(lat, 99),
    p999: percentile(lat, 99.9),
  };
}

/** Open loop at a fixed arrival rate: latency as a user sees it at that load. */
function openLoop(clients: Ipam[], rate: number, seconds: number) {
  return openLoopLatency(rate, seconds, (i) =>
    clients[i % clients.length]!.allocate({
      handle: `b${handleSeq++}/eth0`,
      node: `bn-${Math.floor(Math.random() * NODES)}`,
      pool: 'bench',
    }),
  );
}

/** Allocations over mTLS beside the same server's plaintext listener, alternating run by run. */
async function transportCost(db: { appUrl: string; ownerUrl: string }): Promise<Row[]> {
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-bench-transport-'));
  chmodSync(dir, 0o755);
  const cp = await startUntil(
    process.execPath,
    [path.join(import.meta.dirname, 'control-plane-transport.js'), path.join(dir, 'cp')],
    /"serving":true/,
    {
      env: {
        DATABASE_URL: db.appUrl,
        WEFT_MIGRATION_DATABASE_URL: db.ownerUrl,
        WEFT_HTTP_LISTEN: 'off',
        WEFT_LOG_LEVEL: 'error',
      },
    },
  );
  const rows: Row[] = [];
  try {
    const { port, plaintextPort, pkiDir } = JSON.parse(cp.line) as {
      port: number;
      plaintextPort: number;
      pkiDir: string;
    };
    const security = {
      mode: 'mtls' as const,
      caFile: path.join(pkiDir, 'ca.crt'),
      certFile: path.join(pkiDir, 'admin.crt'),
      keyFile: path.join(pkiDir, 'admin.key'),
    };
    for (const concurrency of [1, 8, 64]) {
      const tls = Array.from({ length: concurrency }, () =>
        createClient(IpamServiceService, `127.0.0.1:${port}`, { security }),
      );
      const plain = Array.from({ length: concurrency }, () =>
        createClient(IpamServiceService, `127.0.0.1:${plaintextPort}`, { security: { mode: 'insecure' } }),
      );
      const [overTls, overPlain] = [[], []] as [
        Awaited<ReturnType<typeof closedLoop>>[],
        Awaited<ReturnType<typeof closedLoop>>[],
      ];
      for (let r = 0; r < RUNS; r++) {
        overTls.push(await closedLoop(tls, SECONDS));
        overPlain.push(await closedLoop(plain, SECONDS));
      }
      tls.forEach((c) => c.close());
      plain.forEach((c) => c.close());
      const [a, b] = [median(overTls.map((o) => o.rate)), median(overPlain.map((o) => o.rate))];
      const clients = `${concurrency} client${concurrency > 1 ? 's' : ''}`;
      rows.push({
        figure: `allocations over mTLS, ${clients}`,
        value: perSec(a),
        baseline: `plaintext ${perSec(b)}`,
        ratio: (a / b).toFixed(2),
        goal: `>= 0.80: ${a / b >= 0.8 ? 'met' : 'missed'}`,
      });
      rows.push({
        figure: '  latency p50 / p99, mTLS | plaintext',
        value: `${ms(median(overTls.map((o) => o.p50)))} / ${ms(median(overTls.map((o) => o.p99)))}`,
        baseline: `${ms(median(overPlain.map((o) => o.p50)))} / ${ms(median(overPlain.map((o) => o.p99)))}`,
      });
    }
  } finally {
    await cp.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

async function main() {
  const pgbench = findPgbench();
  if (!pgbench) throw new Error('pgbench not found: run `bash bench/install-deps.sh` (Debian package postgresql-15)');
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-bench-ipam-'));
  chmodSync(dir, 0o755);
  // WEFT_BENCH_EXPLAIN_MS: the control plane's statements slower than this are logged with their plans (auto_explain,
  // nested statements too), PostgreSQL's log going to stderr.
  const explainMs = process.env.WEFT_BENCH_EXPLAIN_MS;
  const pgLogger = explainMs
    ? createLogger(
        {},
        { level: 'debug', write: (line) => process.stderr.write(String(JSON.parse(line).line ?? '') + '\n') },
      )
    : silentLogger;
  const db = await startEmbeddedPostgres(dir, await freePort(), pgLogger);
  const sql = new pg.Client({ connectionString: db.ownerUrl });
  await sql.connect();
  if (explainMs) {
    const role = new URL(db.appUrl).username;
    await sql.query(`ALTER ROLE ${role} SET session_preload_libraries = 'auto_explain'`);
    await sql.query(`ALTER ROLE ${role} SET auto_explain.log_min_duration = ${Number(explainMs)}`);
    await sql.query(`ALTER ROLE ${role} SET auto_explain.log_nested_statements = on`);
  }
  await sql.query(
    'CREATE TABLE bench_baseline (id bigserial PRIMARY KEY, v double precision, at timestamptz DEFAULT now())',
  );
  const cp = await startWeftUp({
    dataDir: path.join(dir, 'cp'),
    databaseUrl: db.appUrl,
    migrationDatabaseUrl: db.ownerUrl,
    logLevel: 'warn',
  });
  // weft up's own admin certificate (made in <data-dir>/pki on its first start).
  const { target: address, security, pkiDir: pki } = cp;
  const admin = createClient(IpamServiceService, address, { security });
  const rows: Row[] = [];
  try {
    if (PARTS.has('fleet'))
      rows.push(
        ...(await fleetPart({
          address,
          cpu: cpuMeter(cp.pid(), path.join(dir, 'pg')),
          ca: await readCa(pki),
          admin,
          sql,
          ownerUrl: db.ownerUrl,
          pgbench,
          runs: RUNS,
          seconds: SECONDS,
          log: (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`),
        })),
      );
    if (['closed', 'transport', 'batch', 'half'].some((x) => PARTS.has(x))) {
      await admin.createPool({ name: 'bench', cidr: '10.0.0.0/10', blockPrefixLength: 26 });
      // Warm up: every node claims its first block, so the runs measure steady-state allocation.
      const warm = Array.from({ length: 8 }, () => createClient(IpamServiceService, address, { security }));
      for (let n = 0; n < NODES; n += 8)
        await Promise.all(
          warm.map((c, i) => c.allocate({ handle: `w${n + i}/eth0`, node: `bn-${n + i}`, pool: 'bench' })),
        );
      warm.forEach((c) => c.close());
      // Statistics for the tables just filled, as autovacuum takes them within minutes of such growth: without them the
      // planner guesses a one-row blocks table and the allocation statement walks the pool's blocks.
      await sql.query('ANALYZE');
    }

    let maxRate = 0;
    if (PARTS.has('closed')) {
      // The transport's own floor: an empty call to a grpc-js server in another process, with the same callers.
      const echo = await startEchoServer();
      const floors: Row[] = [];
      for (const concurrency of [1, 8, 64]) {
        const clients = Array.from({ length: concurrency }, () =>
          createClient(IpamServiceService, address, { security }),
        );
        const ours = [];
        const base = [];
        const echoes = [];
        for (let r = 0; r < RUNS; r++) {
          ours.push(await closedLoop(clients, SECONDS));
          base.push(await pgbenchInsertTps(pgbench, db.ownerUrl, concurrency, SECONDS));
          echoes.push(await echo.rate(concurrency, SECONDS));
        }
        floors.push({
          figure: `allocations beside an empty gRPC call, ${concurrency} client${concurrency > 1 ? 's' : ''}`,
          value: perSec(median(ours.map((o) => o.rate))),
          baseline: `grpc-js echo ${perSec(median(echoes))}`,
          ratio: (median(ours.map((o) => o.rate)) / median(echoes)).toFixed(2),
        });
        clients.forEach((c) => c.close());
        const rate = median(ours.map((o) => o.rate));
        const baseRate = median(base);
        maxRate = Math.max(maxRate, rate);
        rows.push({
          figure: `allocations, ${concurrency} client${concurrency > 1 ? 's' : ''}`,
          value: perSec(rate),
          baseline: `pgbench insert ${perSec(baseRate)}`,
          ratio: (rate / baseRate).toFixed(2),
          goal: '>= 0.60',
        });
        rows.push({
          figure: `  latency p50 / p99 / p99.9`,
          value: `${ms(median(ours.map((o) => o.p50)))} / ${ms(median(ours.map((o) => o.p99)))} / ${ms(median(ours.map((o) => o.p999)))}`,
        });
      }
      echo.stop();
      rows.push(...floors);
    }
    if (PARTS.has('transport')) rows.push(...(await transportCost(db)));
    // Batches: 100 allocations per call, 8 callers: what the API can do when a caller has many to make.
    if (PARTS.has('batch')) {
      const clients = Array.from({ length: 8 }, () => createClient(IpamServiceService, address, { security }));
      const rates = [];
      for (let r = 0; r < RUNS; r++) {
        let done = 0;
        const end = performance.now() + SECONDS * 1000;
        await Promise.all(
          clients.map(async (c) => {
            while (performance.now() < end) {
              const requests = Array.from({ length: 100 }, () =>
                AllocateRequest.fromPartial({
                  handle: `b${handleSeq++}/eth0`,
                  node: `bn-${Math.floor(Math.random() * NODES)}`,
                  pool: 'bench',
                }),
              );
              const { results } = await c.batchAllocate({ requests });
              done += results.filter((x) => x.allocations.length > 0).length;
            }
          }),
        );
        rates.push(done / SECONDS);
      }
      clients.forEach((c) => c.close());
      const rate = median(rates);
      const baseRate = median(await Promise.all([pgbenchInsertTps(pgbench, db.ownerUrl, 8, SECONDS)]));
      rows.push({
        figure: 'allocations in batches of 100, 8 callers',
        value: perSec(rate),
        baseline: `pgbench insert ${perSec(baseRate)}`,
        ratio: (rate / baseRate).toFixed(2),
        goal: '>= 0.60',
      });
    }
    if (PARTS.has('half')) {
      const halfRate = maxRate > 0 ? maxRate / 2 : Number(process.env.WEFT_BENCH_HALF_RATE ?? 816);
      const halfClients = Array.from({ length: 64 }, () => createClient(IpamServiceService, address, { security }));
      // Baseline: an empty grpc-js call (server in another process) at the same arrival rate over as many channels.
      const echo = await startEchoServer();
      const half = [];
      const floor = [];
      for (let r = 0; r < RUNS; r++) {
        half.push(await openLoop(halfClients, halfRate, SECONDS));
        floor.push(await echo.openLoop(halfRate, 64, SECONDS));
      }
      echo.stop();
      halfClients.forEach((c) => c.close());
      const p99 = median(half.map((h) => h.p99));
      rows.push({
        figure: `latency at half load (${perSec(halfRate)}) p50 / p99`,
        value: `${ms(median(half.map((h) => h.p50)))} / ${ms(p99)}`,
        baseline: `empty gRPC call ${ms(median(floor.map((h) => h.p50)))} / ${ms(median(floor.map((h) => h.p99)))}`,
        ratio: (p99 / median(floor.map((h) => h.p99))).toFixed(2),
        goal: `p99 <= 10 ms: ${p99 <= 10 ? 'met' : 'missed'}`,
      });
    }

    const domain = Number((await sql.query(`SELECT id FROM ipam.routing_domains WHERE name = 'default'`)).rows[0].id);
    let loadSeconds = 0;
    if (PARTS.has('history')) {
      // History: synthetic closed allocations, 50 generations per address, one minute each.
      await admin.createPool({ name: 'history', cidr: '11.0.0.0/8', blockPrefixLength: 26 });
      const addresses = Math.ceil(HISTORY_ROWS / 50);
      const t0 = Date.now();
      await sql.query(`INSERT INTO ipam.blocks (pool_id, routing_domain_id, cidr, node, next_offset, live_count)
        SELECT p.id, p.routing_domain_id, set_masklen('11.0.0.0'::inet + (i * 64), 26)::cidr, 'hist-' || (i % ${NODES}), 64, 0
        FROM ipam.pools p, generate_series(0, ${Math.ceil(addresses / 64) - 1}) i WHERE p.name = 'history'`);
      // Blocks were inserted in order: block i has id first + i, so no join is needed.
      const [{ first: histFirst, pool: histPool }] = (
        await sql.query(
          `SELECT min(b.id) AS first, min(b.pool_id) AS pool FROM ipam.blocks b JOIN ipam.pools p ON p.id = b.pool_id WHERE p.name = 'history'`,
        )
      ).rows;
      await sql.query(`INSERT INTO ipam.allocations (handle, address, family, pool_id, block_id, routing_domain_id, node, pod_namespace, pod_name, container_id, allocated_at, released_at)
        SELECT 'hist-' || a || '-' || g || '/eth0', '11.0.0.0'::inet + a, 4, ${histPool}, ${histFirst} + a / 64, ${domain}, 'hist-' || ((a / 64) % ${NODES}), 'ns', 'pod-' || a || '-' || g, 'c' || a,
               timestamptz '2026-01-01' + (g * interval '1 hour') + (a % 3600) * interval '1 second',
               timestamptz '2026-01-01' + (g * interval '1 hour') + (a % 3600) * interval '1 second' + interval '50 minutes'
        FROM generate_series(0, ${addresses - 1}) a CROSS JOIN generate_series(0, 49) g`);
      await sql.query('ANALYZE ipam.allocations');
      loadSeconds = (Date.now() - t0) / 1000;
      const who: number[] = [];
      for (let i = 0; i < 500; i++) {
        const a = Math.floor(Math.random() * addresses);
        const g = Math.floor(Math.random() * 50);
        const at = new Date(Date.parse('2026-01-01T00:00:00Z') + g * 3_600_000 + (a % 3600) * 1000 + 600_000);
        const addr = `11.${(a >> 16) & 255}.${(a >> 8) & 255}.${a & 255}`;
        const s = performance.now();
        const { entries } = await admin.listAllocationHistory({ address: addr, at });
        who.push(performance.now() - s);
        if (entries.length !== 1 || entries[0]!.allocation!.podName !== `pod-${a}-${g}`)
          throw new Error(`wrong answer for ${addr} at ${at.toISOString()}`);
      }
      who.sort((x, y) => x - y);
      const histCount = Number((await sql.query(`SELECT count(*) FROM ipam.allocations`)).rows[0].count);
      rows.push({
        figure: `"who held X at T", ${(histCount / 1e6).toFixed(1)}M history rows, p50 / p99`,
        value: `${ms(percentile(who, 50))} / ${ms(percentile(who, 99))}`,
        goal: 'p99 <= 20 ms',
      });
    }

    if (PARTS.has('utilization')) {
      // Utilization: a pool with a million live allocations, and 1% as many addresses cooling down (released within the
      // pool's cool-down, in blocks of their own), so that the count of cooling addresses is part of the figure.
      await admin.createPool({ name: 'million', cidr: '12.0.0.0/11', blockPrefixLength: 26, cooldownSeconds: 3600 });
      const liveBlocks = Math.ceil(LIVE_ROWS / 64);
      const coolBlocks = Math.ceil(LIVE_ROWS / 100 / 64);
      await sql.query(`INSERT INTO ipam.blocks (pool_id, routing_domain_id, cidr, node, next_offset, live_count)
        SELECT p.id, p.routing_domain_id, set_masklen('12.0.0.0'::inet + (i * 64), 26)::cidr, 'live-' || (i % ${NODES}), 64, CASE WHEN i < ${liveBlocks} THEN 64 ELSE 0 END
        FROM ipam.pools p, generate_series(0, ${liveBlocks + coolBlocks - 1}) i WHERE p.name = 'million'`);
      const [{ first: liveFirst, pool: livePool }] = (
        await sql.query(
          `SELECT min(b.id) AS first, min(b.pool_id) AS pool FROM ipam.blocks b JOIN ipam.pools p ON p.id = b.pool_id WHERE p.name = 'million'`,
        )
      ).rows;
      await sql.query(`INSERT INTO ipam.allocations (handle, address, family, pool_id, block_id, routing_domain_id, node)
        SELECT 'live-' || a || '/eth0', '12.0.0.0'::inet + a, 4, ${livePool}, ${liveFirst} + a / 64, ${domain}, 'live-' || ((a / 64) % ${NODES})
        FROM generate_series(0, ${liveBlocks * 64 - 1}) a`);
      await sql.query(`INSERT INTO ipam.free_addresses (address, routing_domain_id, block_id, free_since)
        SELECT '12.0.0.0'::inet + a, ${domain}, ${liveFirst} + a / 64, now() FROM generate_series(${liveBlocks * 64}, ${(liveBlocks + coolBlocks) * 64 - 1}) a`);
      await sql.query('ANALYZE');
      // Baseline: what utilization cost before per-node counters, aggregating the pool's blocks (straight in SQL, no RPC).
      const perBlock = `SELECT node, count(*) AS blocks, sum(live_count) AS live FROM ipam.blocks WHERE pool_id = ${livePool} AND released_at IS NULL GROUP BY node ORDER BY node`;
      const util: number[] = [];
      const base: number[] = [];
      let allocated = 0;
      let cooling = 0;
      await admin.getUtilization({ pool: 'million' });
      for (let i = 0; i < 200; i++) {
        const s = performance.now();
        const { pools } = await admin.getUtilization({ pool: 'million' });
        util.push(performance.now() - s);
        allocated = pools[0]!.counts!.allocated;
        cooling = pools[0]!.counts!.coolingDown;
        const b = performance.now();
        await sql.query(perBlock);
        base.push(performance.now() - b);
      }
      if (allocated !== liveBlocks * 64 || cooling !== coolBlocks * 64)
        throw new Error(
          `utilization says ${allocated} live and ${cooling} cooling, not ${liveBlocks * 64} and ${coolBlocks * 64}`,
        );
      util.sort((x, y) => x - y);
      base.sort((x, y) => x - y);
      rows.push({
        figure: `utilization, pool with ${(allocated / 1e6).toFixed(2)}M live, ${(cooling / 1e3).toFixed(0)}k cooling, p50 / p99`,
        value: `${ms(percentile(util, 50))} / ${ms(percentile(util, 99))}`,
        baseline: `SQL sum over its ${liveBlocks + coolBlocks} blocks ${ms(percentile(base, 50))} / ${ms(percentile(base, 99))}`,
        ratio: (percentile(util, 99) / percentile(base, 99)).toFixed(2),
        goal: `<= 50 ms: ${percentile(util, 99) <= 50 ? 'met' : 'missed'}`,
      });
    }
    printTable(
      `bench/ipam — medians of ${RUNS} runs of ${SECONDS} s; ${NODES} nodes; history load took ${loadSeconds.toFixed(0)} s`,
      rows,
    );
  } finally {
    admin.close();
    await sql.end();
    await cp.stop();
    await db.stop();
    // WEFT_BENCH_KEEP=1 keeps the data folder (embedded PostgreSQL in <dir>/pg) to look at the database afterwards.
    if (process.env.WEFT_BENCH_KEEP === '1') process.stderr.write(`bench/ipam: data kept in ${dir}\n`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`bench/ipam: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
