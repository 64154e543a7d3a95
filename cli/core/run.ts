import { existsSync } from 'node:fs';
import path from 'node:path';
import type { ServiceDefinition } from '@grpc/grpc-js';
import { createClient, type PromiseClient } from '../../lib/grpc/client.js';
import { clientTlsDir, type TransportSecurity } from '../../lib/grpc/credentials.js';
import { PKI_FILES } from '../../lib/pki.js';
import { parseControlPlaneEndpoints } from '../../lib/grpc/endpoints.js';
import { clusterAdminSecurity, controlPlaneTarget, readState } from '../cluster/cluster.js';
import { commandUsage, parseCommandLine, type FlagValues } from './argv.js';
import { UsageError, type CommandGroup, type Connection, type Context } from './command.js';
import { describeFailure } from './errors.js';
import { Output, parseFormat } from './output.js';

/**
 * Runs one command line: parse against the declarations, build the context (output format, connection, clients),
 * call the handler, close the clients, and turn a throw into a status and a line on stderr (core/errors.ts).
 */
export interface RunOptions {
  /** Appended to `weft help` (the processes' settings). */
  extraHelp?: () => string;
  stdout?: (text: string) => void;
  stderr?: (text: string) => void;
  /** Ends watches instead of SIGINT and SIGTERM (tests). */
  signal?: AbortSignal;
}

/** The local cluster's state folder. */
export function stateDirOf(values: FlagValues): string {
  return path.resolve(
    (values['state-dir'] as string | undefined) ?? process.env.WEFT_CLUSTER_DIR ?? '/run/weft-cluster',
  );
}

/**
 * The control plane and credentials: `--server`, `$WEFT_SERVER`, the local cluster's socket, 127.0.0.1:7400; and
 * `--tls-dir`, `$WEFT_TLS_DIR`, the local cluster's admin certificate (when a cluster runs from the state dir), or
 * `weft up`'s admin certificate in its data dir. An API token (`--token`, `$WEFT_TOKEN`) makes the calls the
 * token's, whatever the certificate (lib/auth/DESIGN.md).
 */
export function resolveConnection(values: FlagValues, stateDir: string): Connection {
  const cluster = existsSync(path.join(stateDir, 'state.json'));
  const server =
    (values.server as string | undefined) ??
    process.env.WEFT_SERVER ??
    (cluster ? controlPlaneTarget(readState(stateDir)) : '127.0.0.1:7400');
  // Several replicas: `--server 10.0.0.1:7400,10.0.0.2:7400` (lib/grpc/endpoints.ts); the CLI moves to another when one goes.
  if (!/^(dns|ipv4|ipv6):/.test(server)) {
    try {
      parseControlPlaneEndpoints(server);
    } catch (err) {
      throw new UsageError(`--server ${JSON.stringify(server)}: ${(err as Error).message}`);
    }
  }
  return {
    server,
    security: resolveSecurity(values, stateDir, cluster),
    token: (values.token as string | undefined) ?? process.env.WEFT_TOKEN ?? undefined,
  };
}

function resolveSecurity(values: FlagValues, stateDir: string, cluster: boolean): TransportSecurity {
  const dir = (values['tls-dir'] as string | undefined) ?? process.env.WEFT_TLS_DIR;
  if (dir) return clientTlsDir(path.resolve(dir));
  if (cluster) return clusterAdminSecurity({ stateDir });
  const pki = path.resolve(
    process.env.WEFT_PKI_DIR ||
      path.join((values['data-dir'] as string | undefined) ?? process.env.WEFT_DATA_DIR ?? '.weft', 'pki'),
  );
  if (!existsSync(path.join(pki, PKI_FILES.adminCert))) {
    throw new UsageError(
      `no credentials for the control plane: pass --tls-dir DIR (ca.crt, tls.crt, tls.key; \`weft ca issue --admin NAME --out DIR\` on the control plane's host makes one), set WEFT_TLS_DIR, or run where \`weft up\` keeps ${pki}/${PKI_FILES.adminCert} (--data-dir)`,
    );
  }
  return {
    mode: 'mtls',
    caFile: path.join(pki, PKI_FILES.caCert),
    certFile: path.join(pki, PKI_FILES.adminCert),
    keyFile: path.join(pki, PKI_FILES.adminKey),
  };
}

export async function runCommandLine(
  argv: readonly string[],
  groups: readonly CommandGroup[],
  options: RunOptions = {},
): Promise<number> {
  const stdout = options.stdout ?? ((t: string) => void process.stdout.write(t));
  const stderr = options.stderr ?? ((t: string) => void process.stderr.write(t));
  const clients: { close(): void }[] = [];
  let connection: Connection | undefined;
  let interrupted: { signal: AbortSignal; remove(): void } | undefined;
  try {
    const line = parseCommandLine(argv, groups, options.extraHelp?.());
    if (line.kind === 'help') {
      stdout(line.text);
      return line.status;
    }
    const { command, args, values } = line;
    const declared = (flag: string) => {
      if (flag !== 'help' && !(command.flags && flag in command.flags))
        throw new Error(`weft ${command.path.join(' ')} reads --${flag}, which it does not declare`);
      return values[flag];
    };
    const stateDir = stateDirOf(values);
    const out = new Output(
      command.flags?.output ? parseFormat(values.output as string | undefined, values.json === true) : 'table',
      stdout,
    );
    const ctx: Context = {
      command,
      args,
      str: (flag) => declared(flag) as string | undefined,
      bool: (flag) => declared(flag) === true,
      list: (flag) => (declared(flag) as string[] | undefined) ?? [],
      out,
      usage: (detail) => new UsageError(`${detail ? `${detail}\n` : ''}${commandUsage(command)}`),
      stateDir,
      connection: () => (connection ??= resolveConnection(values, stateDir)),
      client<D extends ServiceDefinition>(definition: D): PromiseClient<D> {
        const c = ctx.connection();
        const client = createClient(definition, c.server, { security: c.security, token: c.token });
        clients.push(client);
        return client;
      },
      warn: (text) => stderr(`weft: ${text}\n`),
      untilInterrupted: () =>
        (interrupted ??= options.signal ? { signal: options.signal, remove: () => {} } : onSignals()).signal,
    };
    return await command.run(ctx);
  } catch (err) {
    const failure = describeFailure(err, connection?.server);
    stderr(`weft: ${failure.message}\n`);
    return failure.status;
  } finally {
    for (const c of clients) c.close();
    interrupted?.remove();
  }
}

/** An AbortSignal that SIGINT and SIGTERM abort, while the handlers are installed. */
function onSignals(): { signal: AbortSignal; remove(): void } {
  const ac = new AbortController();
  const stop = () => ac.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return {
    signal: ac.signal,
    remove: () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    },
  };
}
