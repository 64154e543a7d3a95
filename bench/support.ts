import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

/** Shared pieces of the benchmarks: percentiles, medians, pgbench, and the printed table. */
export const run = promisify(execFile);

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

export function findPgbench(): string | null {
  try {
    return execFileSync('sh', ['-c', 'command -v pgbench'], { encoding: 'utf8' }).trim() || null;
  } catch {
    for (const v of existsSync('/usr/lib/postgresql') ? readdirSync('/usr/lib/postgresql').sort().reverse() : []) {
      const p = `/usr/lib/postgresql/${v}/bin/pgbench`;
      if (existsSync(p)) return p;
    }
    return null;
  }
}

/** pgbench's rate (transactions per second) for a one-row INSERT transaction at `clients` connections. */
export async function pgbenchInsertTps(
  pgbench: string,
  url: string,
  clients: number,
  seconds: number,
): Promise<number> {
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-pgbench-'));
  try {
    const script = path.join(dir, 'insert.sql');
    writeFileSync(script, 'INSERT INTO bench_baseline (v) VALUES (random());\n');
    const { stdout } = await run(
      pgbench,
      ['-n', '-c', String(clients), '-j', String(Math.min(clients, 2)), '-T', String(seconds), '-f', script, url],
      { timeout: (seconds + 60) * 1000 },
    );
    const m = /tps = ([\d.]+) \(without initial connection time\)/.exec(stdout) ?? /tps = ([\d.]+)/.exec(stdout);
    if (!m) throw new Error(`cannot read pgbench's rate:\n${stdout}`);
    return Number(m[1]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface Row {
  figure: string;
  value: string;
  baseline?: string;
  ratio?: string;
  goal?: string;
}

export function printTable(title: string, rows: Row[]): void {
  const cols: (keyof Row)[] = ['figure', 'value', 'baseline', 'ratio', 'goal'];
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (vals: string[]) => '| ' + vals.map((v, i) => v.padEnd(widths[i]!)).join(' | ') + ' |';
  process.stdout.write(`\n${title}\n${line(cols)}\n${line(widths.map((w) => '-'.repeat(w)))}\n`);
  for (const r of rows) process.stdout.write(line(cols.map((c) => r[c] ?? '')) + '\n');
}

export const ms = (x: number) => `${x.toFixed(2)} ms`;
export const perSec = (x: number) => `${Math.round(x)}/s`;

/**
 * Open loop: calls start at a fixed arrival rate whatever the answers do (as a cluster's pods arrive), each timed from
 * its start; latency as a user sees it at that load. `call(i)` makes the i-th call.
 */
export async function openLoopLatency(
  rate: number,
  seconds: number,
  call: (i: number) => Promise<unknown>,
): Promise<{ p50: number; p99: number; achieved: number }> {
  const lat: number[] = [];
  const total = Math.floor(rate * seconds);
  const start = performance.now();
  const inflight: Promise<void>[] = [];
  for (let i = 0; i < total; i++) {
    const due = start + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    inflight.push(
      (async () => {
        const t0 = performance.now();
        await call(i);
        lat.push(performance.now() - t0);
      })(),
    );
  }
  await Promise.all(inflight);
  lat.sort((a, b) => a - b);
  return {
    p50: percentile(lat, 50),
    p99: percentile(lat, 99),
    achieved: lat.length / ((performance.now() - start) / 1000),
  };
}

/** CPU milliseconds so far of a process (user + system) and of its reaped children. */
function procCpuMs(pid: number): { self: number; children: number } {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  // After the name: state is field 3, utime 14, stime 15, cutime 16, cstime 17 (index = field - 3); 100 ticks a second.
  return { self: (Number(f[11]) + Number(f[12])) * 10, children: (Number(f[13]) + Number(f[14])) * 10 };
}

/** CPU milliseconds so far of: this process, a server process, and PostgreSQL (postmaster, live and reaped backends). */
export function cpuMeter(serverPid: number, pgDir: string): () => { bench: number; server: number; postgres: number } {
  const master = Number(readFileSync(path.join(pgDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  return () => {
    const m = procCpuMs(master);
    let postgres = m.self + m.children;
    for (const d of readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      try {
        const s = readFileSync(`/proc/${d}/stat`, 'utf8');
        if (Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]) === master) postgres += procCpuMs(Number(d)).self;
      } catch {
        /* exited */
      }
    }
    const u = process.cpuUsage();
    return { bench: (u.user + u.system) / 1000, server: procCpuMs(serverPid).self, postgres };
  };
}
