import { createClient } from '../lib/grpc/client.js';
import type { TransportSecurity } from '../lib/grpc/credentials.js';
import { IpamServiceService, type AllocateRequest } from '../gen/weft/ipam/v1/ipam.js';

/**
 * One Allocate from a process of its own, as a client on another machine makes it (bench/scale's restart part: the
 * route change written right after the control plane serves again, not delayed by the simulator's event loop, which
 * every simulated agent shares). Arguments: the target, the transport security and the request, as JSON. Waits for
 * a connection (up to 60 s) and prints {"at": <wall-clock ms when Allocate returned>}.
 */
async function main() {
  const [target, security, request] = JSON.parse(process.argv[2] ?? '') as [
    string,
    TransportSecurity,
    Partial<AllocateRequest>,
  ];
  const ipam = createClient(IpamServiceService, target, { security });
  await ipam.allocate(request as AllocateRequest, { timeoutMs: 60_000, waitForReady: true });
  process.stdout.write(`${JSON.stringify({ at: Date.now() })}\n`);
  process.exit(0);
}

main().catch((err: Error) => {
  process.stderr.write(`${err.message}\n`);
  process.exit(1);
});
