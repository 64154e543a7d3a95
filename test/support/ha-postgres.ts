import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * A highly available PostgreSQL for tests, started by the project's own script (scripts/ha/up.sh: three etcd members,
 * three Patroni-run PostgreSQL 15 members with synchronous replication, HAProxy in front routing to the primary) and
 * stopped by scripts/ha/down.sh. Everything is on 127.0.0.1, on free ports, in one folder; `stop()` (and the test
 * process's exit, if a test forgot) leaves no process and no folder behind.
 */
export interface HaPostgres {
  /** The run's folder (its name is the run's prefix). */
  dir: string;
  /** The services' role (`weft_app`) through HAProxy's read-write port: DATABASE_URL. */
  appUrl: string;
  /** The owner (`weft`) through HAProxy: WEFT_MIGRATION_DATABASE_URL, and for tests looking under the API. */
  ownerUrl: string;
  /** The superuser through HAProxy (database `postgres`). */
  superuserUrl: string;
  /** The services' role through HAProxy's read-only port (the standbys). */
  replicasUrl: string;
  /**
   * DATABASE_URL and WEFT_MIGRATION_DATABASE_URL through HAProxy's unix socket, as a file of NAME=VALUE lines: for a
   * control plane in another network namespace (`weft cluster up --control-plane-env`).
   */
  socketEnvFile: string;
  /** The members as Patroni sees them now (GET /cluster on any member that answers). */
  members(): Promise<HaMember[]>;
  /** The name of the member that is primary now, or null while there is none. */
  primary(): Promise<string | null>;
  /**
   * SIGKILLs the primary's postmaster (its Patroni keeps running, as after a crash of PostgreSQL; with
   * `withPatroni` its Patroni too, as when the whole machine dies). Resolves at the kill, with what was killed.
   */
  killPrimary(opts?: { withPatroni?: boolean }): Promise<{ member: string; pid: number; killedAt: number }>;
  /** Stops every process and removes the folder. */
  stop(): Promise<void>;
}

export interface HaMember {
  name: string;
  /** Patroni's role: `leader`, `sync_standby` or `replica`. */
  role: string;
  /** Patroni's state: `running`, `stopped`, `starting`, … */
  state: string;
  timeline?: number;
  lag?: number | string;
}

const here = path.dirname(fileURLToPath(import.meta.url));
/** scripts/ha/, from test/support (source) or dist/test/support (built). */
function scriptsDir(): string {
  for (const up of ['../..', '../../..']) {
    const candidate = path.resolve(here, up, 'scripts/ha');
    if (existsSync(path.join(candidate, 'up.sh'))) return candidate;
  }
  throw new Error(`scripts/ha not found near ${here}`);
}

/** What scripts/ha/up.sh needs, each with the Debian package that provides it. */
export const haBinaries: Record<string, string> = {
  '/usr/lib/postgresql/15/bin/postgres': 'postgresql-15',
  '/usr/bin/patroni': 'patroni',
  '/usr/bin/etcd': 'etcd-server',
  '/usr/sbin/haproxy': 'haproxy',
  '/usr/bin/psql': 'postgresql-client-15',
  '/usr/bin/python3': 'python3',
};

/** Why the HA PostgreSQL cannot start here (a missing program, with its package), or null when it can. */
export function haPostgresMissing(): string | null {
  const missing = Object.entries(haBinaries).filter(([file]) => !existsSync(file));
  if (missing.length === 0) return null;
  return `needs ${missing.map(([file, pkg]) => `${file} (Debian package ${pkg})`).join(', ')}: run scripts/install-deps.sh as root`;
}

const liveDirs = new Set<string>();
let exitHookInstalled = false;
function downSync(dir: string): void {
  try {
    execFileSync('bash', [path.join(scriptsDir(), 'down.sh'), dir], { stdio: 'ignore', timeout: 60_000 });
  } catch {
    rmSync(dir, { recursive: true, force: true });
  }
}
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // A test that crashed before its after() hook ran, or was interrupted, must not leave a cluster behind.
  const cleanUp = () => {
    for (const d of liveDirs) downSync(d);
    liveDirs.clear();
  };
  process.once('exit', cleanUp);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      cleanUp();
      process.kill(process.pid, sig);
    });
  }
}

function run(file: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (err)
        reject(
          new Error(
            `${path.basename(args[0] ?? file)} failed (${err.message.split('\n')[0]}):\n${stderr.slice(-6000)}`,
          ),
        );
      else resolve(stdout);
    });
  });
}

async function getJson(url: string): Promise<unknown> {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  return res.json();
}

/** Starts the HA PostgreSQL with scripts/ha/up.sh (about half a minute: three base backups). */
export async function startHaPostgres(opts: { strict?: boolean } = {}): Promise<HaPostgres> {
  const missing = haPostgresMissing();
  if (missing) throw new Error(`the HA PostgreSQL ${missing}`);
  const scripts = scriptsDir();
  // As root the folder's parents must be enterable by the user postgres: /tmp is.
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-ha-'));
  installExitHook();
  liveDirs.add(dir);
  let out: string;
  try {
    out = await run('bash', [path.join(scripts, 'up.sh'), '--dir', dir, ...(opts.strict ? ['--strict'] : [])], 180_000);
  } catch (err) {
    downSync(dir);
    liveDirs.delete(dir);
    throw err;
  }
  const env = Object.fromEntries(
    out
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
  const apiPorts = String(env.WEFT_HA_PATRONI_PORTS).split(',').map(Number);

  async function members(): Promise<HaMember[]> {
    let last: unknown;
    for (const port of apiPorts) {
      try {
        const body = (await getJson(`http://127.0.0.1:${port}/cluster`)) as { members: HaMember[] };
        return body.members;
      } catch (err) {
        last = err;
      }
    }
    throw new Error(`no Patroni member answers: ${(last as Error)?.message}`);
  }
  const primary = async () => (await members()).find((m) => m.role === 'leader' && m.state === 'running')?.name ?? null;
  /** The pid in a file, if that process is ours (its command line names the run's folder). */
  const ourPid = (pidFile: string): number | null => {
    if (!existsSync(pidFile)) return null;
    const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir) ? pid : null;
    } catch {
      return null;
    }
  };

  return {
    dir,
    appUrl: env.DATABASE_URL!,
    ownerUrl: env.WEFT_MIGRATION_DATABASE_URL!,
    superuserUrl: env.WEFT_HA_SUPERUSER_URL!,
    replicasUrl: env.WEFT_HA_REPLICAS_URL!,
    socketEnvFile: env.WEFT_HA_SOCKET_ENV!,
    members,
    primary,
    async killPrimary({ withPatroni = false } = {}) {
      const member = await primary();
      if (!member) throw new Error(`there is no primary to kill: ${JSON.stringify(await members())}`);
      const pid = ourPid(path.join(dir, member, 'data', 'postmaster.pid'));
      if (!pid) throw new Error(`the primary ${member} has no running postmaster`);
      if (withPatroni) {
        const patroni = ourPid(path.join(dir, `patroni${member.slice(2)}.pid`));
        if (patroni) process.kill(patroni, 'SIGKILL');
      }
      process.kill(pid, 'SIGKILL');
      return { member, pid, killedAt: Date.now() };
    },
    async stop() {
      if (!liveDirs.has(dir)) return;
      try {
        await run('bash', [path.join(scripts, 'down.sh'), dir], 90_000);
      } finally {
        liveDirs.delete(dir);
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
