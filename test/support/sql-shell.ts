import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import pg from 'pg';

/**
 * A PostgreSQL session in another process, for a database only reachable inside a network namespace (the local
 * cluster's control plane): `ip netns exec <ns> node sql-shell.js <url>` reads one SQL statement per line on stdin and
 * answers one JSON line each ({ rows } or { error }). A test holds locks in it (BEGIN; SELECT … FOR UPDATE) to delay
 * what the control plane does. Closing stdin ends the session (an open transaction rolls back).
 */
const SHELL_FLAG = '--weft-sql-shell';

export interface SqlShell {
  query(text: string): Promise<Record<string, unknown>[]>;
  close(): Promise<void>;
}

export function startSqlShellInNetns(netns: string, url: string): Promise<SqlShell> {
  const child = spawn(
    'ip',
    ['netns', 'exec', netns, process.execPath, fileURLToPath(import.meta.url), SHELL_FLAG, url],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const waiting: ((line: string) => void)[] = [];
  createInterface({ input: child.stdout }).on('line', (line) => waiting.shift()?.(line));
  const exited = new Promise<void>((resolve) =>
    child.once('close', () => {
      for (const answer of waiting.splice(0))
        answer(JSON.stringify({ error: `the SQL shell exited: ${stderr.trim()}` }));
      resolve();
    }),
  );
  const shell: SqlShell = {
    query(text) {
      return new Promise((resolve, reject) => {
        if (child.exitCode !== null) return reject(new Error(`the SQL shell has exited: ${stderr}`));
        waiting.push((line) => {
          const answer = JSON.parse(line) as { rows?: Record<string, unknown>[]; error?: string };
          if (answer.error !== undefined) reject(new Error(`${text}: ${answer.error}`));
          else resolve(answer.rows!);
        });
        child.stdin.write(`${text.replace(/\n/g, ' ')}\n`);
      });
    },
    async close() {
      child.stdin.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
  return shell.query('SELECT 1').then(
    () => shell,
    async (err) => {
      child.kill('SIGKILL');
      throw err;
    },
  );
}

async function main(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  // One statement at a time, in order.
  for await (const line of createInterface({ input: process.stdin })) {
    try {
      const r = await client.query(line);
      process.stdout.write(`${JSON.stringify({ rows: r.rows ?? [] })}\n`);
    } catch (err) {
      process.stdout.write(`${JSON.stringify({ error: (err as Error).message })}\n`);
    }
  }
  await client.end();
}

// Only when started as the shell: `node --test dist/` also loads this file, and must find no test in it.
if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === SHELL_FLAG) {
  main(process.argv[3]!).catch((err) => {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(1);
  });
}
