import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Established TCP connections in a namespace matching an `ss` filter on the control-plane port, one line each. */
async function established(netns: string, filter: string): Promise<string[]> {
  const { stdout } = await run('ip', ['netns', 'exec', netns, 'ss', '-Htn', 'state', 'established', filter]);
  return stdout.split('\n').filter((l) => l.trim() !== '');
}

/** Established connections to the control-plane port inside a replica's namespace (its agents' and nothing else). */
export async function connectionsIn(netns: string, port = 7400): Promise<number> {
  return (await established(netns, `( sport = :${port} )`)).length;
}

/** The control-plane addresses (ip:port) an agent holds established connections to, from its node's namespace. */
export async function agentPeers(netns: string, port = 7400): Promise<Set<string>> {
  const lines = await established(netns, `( dport = :${port} )`);
  return new Set(lines.flatMap((l) => l.trim().split(/\s+/).slice(-1)));
}
