import path from 'node:path';
import type { TransportSecurity } from '../../lib/grpc/credentials.js';
import { bin, startUntil, type Started } from './processes.js';

/**
 * `weft up` as a user runs it: the built executable as a child process on a given database, waited for until it
 * serves, with the admin credentials it makes in `<data-dir>/pki` on its first start. It inherits this process's
 * environment, so control-plane settings given to a test or benchmark (WEFT_NODE_LEASE_MS, say) apply to it.
 */
export interface WeftUp {
  /** 127.0.0.1:PORT of its gRPC listener. */
  target: string;
  /** Its PKI folder (`<data-dir>/pki`): the cluster CA and the admin's certificate. */
  pkiDir: string;
  /** The admin's mTLS credentials, for clients. */
  security: TransportSecurity;
  /** The running process's id (another after `start`). */
  pid(): number;
  /** SIGTERM, then SIGKILL after graceMs (default 10 s); resolves with the exit code. */
  stop(graceMs?: number): Promise<number | null>;
  /** Starts it again on the same data folder and port (the free one it took first), and waits until it serves. */
  start(): Promise<void>;
  /** What the running (or last stopped) process has written to stdout and stderr. */
  output(): string;
}

export async function startWeftUp(opts: {
  dataDir: string;
  /** The services' database URL (DATABASE_URL). */
  databaseUrl: string;
  /** The owner's URL, for migrations (WEFT_MIGRATION_DATABASE_URL). */
  migrationDatabaseUrl: string;
  /** WEFT_LOG_LEVEL (default `error`). */
  logLevel?: string;
}): Promise<WeftUp> {
  const env = {
    DATABASE_URL: opts.databaseUrl,
    WEFT_MIGRATION_DATABASE_URL: opts.migrationDatabaseUrl,
    WEFT_HTTP_LISTEN: 'off',
    WEFT_LOG_LEVEL: opts.logLevel ?? 'error',
  };
  const run = (port: number) =>
    startUntil(bin.weft, ['up', '--data-dir', opts.dataDir, '--listen', `127.0.0.1:${port}`], /"serving":true/, {
      env,
    });
  const first = await run(0);
  let current: Started = first;
  // Its one JSON line says where it serves (cli/commands/up.ts).
  const { port, pkiDir } = JSON.parse(first.line) as { port: number; pkiDir: string };
  return {
    target: `127.0.0.1:${port}`,
    pkiDir,
    security: {
      mode: 'mtls',
      caFile: path.join(pkiDir, 'ca.crt'),
      certFile: path.join(pkiDir, 'admin.crt'),
      keyFile: path.join(pkiDir, 'admin.key'),
    },
    pid: () => current.child.pid!,
    stop: (graceMs) => current.stop(graceMs),
    output: () => current.output(),
    async start() {
      current = await run(port);
    },
  };
}
