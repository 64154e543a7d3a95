import net from 'node:net';

/**
 * A TCP proxy on 127.0.0.1 in front of a real server, that can black-hole it: while black-holed it forwards no byte
 * in either direction and closes nothing (what a dropped route or a partitioned network looks like to both ends: the
 * connection stays up and nothing comes back). New connections are accepted but not forwarded either. `restore()`
 * delivers what it held, in order (as TCP would once the network heals), and forwards again. Userspace only: no
 * firewall rule, nothing outside this process.
 */
export interface BlackholeProxy {
  port: number;
  blackhole(): void;
  restore(): void;
  /** Drops every open connection at once with a reset, as when the process at the other end is killed. */
  cut(): void;
  /** Connections currently open through the proxy (client side). */
  open(): number;
  /** The most connections open at once since the last `resetPeak()`. */
  peak(): number;
  resetPeak(): void;
  close(): Promise<void>;
}

interface Pipe {
  /** Writes or holds a chunk for the other side. */
  forward(chunk: Buffer): void;
  flush(): void;
}

/** `upstreamHost` may be a folder (a unix socket's, as PostgreSQL URLs name one): then the upstream is `<folder>/.s.PGSQL.<port>`. */
export async function startBlackholeProxy(upstreamHost: string, upstreamPort: number): Promise<BlackholeProxy> {
  let holed = false;
  let peak = 0;
  const sockets = new Set<net.Socket>();
  const clients = new Set<net.Socket>();
  const pipes = new Set<Pipe>();

  const pipe = (from: net.Socket, to: net.Socket): Pipe => {
    const held: Buffer[] = [];
    const p: Pipe = {
      forward(chunk) {
        if (holed) held.push(chunk);
        else to.write(chunk);
      },
      flush() {
        for (const c of held.splice(0)) to.write(c);
      },
    };
    from.on('data', (c: Buffer) => p.forward(c));
    pipes.add(p);
    return p;
  };

  const server = net.createServer((client) => {
    sockets.add(client);
    clients.add(client);
    peak = Math.max(peak, clients.size);
    const upstream = upstreamHost.startsWith('/')
      ? net.connect(`${upstreamHost}/.s.PGSQL.${upstreamPort}`)
      : net.connect(upstreamPort, upstreamHost);
    sockets.add(upstream);
    const up = pipe(client, upstream);
    const down = pipe(upstream, client);
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      clients.delete(client);
      sockets.delete(upstream);
      pipes.delete(up);
      pipes.delete(down);
    };
    for (const s of [client, upstream]) {
      s.on('error', end);
      s.on('close', end);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    blackhole: () => void (holed = true),
    restore() {
      holed = false;
      for (const p of pipes) p.flush();
    },
    cut() {
      for (const s of sockets) s.resetAndDestroy();
    },
    open: () => clients.size,
    peak: () => peak,
    resetPeak: () => void (peak = clients.size),
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
