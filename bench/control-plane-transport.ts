import { loadControlPlaneConfig } from '../cli/control-plane.config.js';
import { startControlPlane } from '../cli/control-plane.js';
import { createLogger } from '../lib/logger.js';

/**
 * A control plane for bench/ipam's `transport` part: `weft up`'s own code (settings from the environment, the data
 * folder as the first argument) with its mTLS listener on 127.0.0.1 and, beside it on the same server, a plaintext
 * listener, so that one run measures allocations over both. Prints {"serving":true,"port":…,"plaintextPort":…} and
 * runs until SIGTERM.
 */
async function main() {
  const dataDir = process.argv[2];
  if (!dataDir) throw new Error('usage: control-plane-transport.js DATA_DIR');
  const config = loadControlPlaneConfig({ dataDir, listen: '127.0.0.1:0' });
  const logger = createLogger({ component: 'control-plane' }, { level: config.logLevel });
  const cp = await startControlPlane(config, logger, {}, { plaintextListenForBenchmarks: '127.0.0.1:0' });
  process.stdout.write(
    JSON.stringify({ serving: true, port: cp.tcpPort, plaintextPort: cp.plaintextPort, pkiDir: cp.pkiDir }) + '\n',
  );
  const stop = () =>
    void cp.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  process.removeAllListeners('SIGTERM');
  process.once('SIGTERM', stop);
}

main().catch((err: Error) => {
  process.stderr.write(`${err.stack ?? err.message}\n`);
  process.exit(1);
});
