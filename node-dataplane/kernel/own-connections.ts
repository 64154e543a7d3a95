import { readFile, readdir, readlink } from 'node:fs/promises';
import { endianness } from 'node:os';
import { run as runHere } from '../../lib/exec.js';
import { destroyArgs, ownConnectionsFrom, parseProcNetTcp } from '../domain/own-connections.js';

/**
 * Destroys this process's own TCP connections from `address` (the underlay address the node just lost), and no
 * other program's: its sockets are found by inode (/proc/self/fd) in /proc/self/net/tcp{,6} (this process's network
 * namespace) and handed to `ss -K` by their exact four-tuples. Returns how many were destroyed.
 */
export async function closeOwnConnections(address: string, opts: { run?: typeof runHere } = {}): Promise<number> {
  const inodes = new Set<number>();
  const fds = await readdir('/proc/self/fd');
  await Promise.all(
    fds.map(async (fd) => {
      const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
      const m = /^socket:\[(\d+)\]$/.exec(target);
      if (m) inodes.add(Number(m[1]));
    }),
  );
  const le = endianness() === 'LE';
  const [tcp, tcp6] = await Promise.all(
    ['tcp', 'tcp6'].map((t) => readFile(`/proc/self/net/${t}`, 'utf8').catch(() => '')),
  );
  const own = ownConnectionsFrom([...parseProcNetTcp(tcp!, 4, le), ...parseProcNetTcp(tcp6!, 6, le)], inodes, address);
  const args = destroyArgs(own);
  if (args) await (opts.run ?? runHere)('ss', args, { timeoutMs: 5000 });
  return own.length;
}
