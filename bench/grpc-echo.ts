import { spawn, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { credentials, makeGenericClientConstructor, type Client } from '@grpc/grpc-js';
import { openLoopLatency } from './support.js';

/**
 * The floor an RPC framework sets on this machine: a grpc-js server in its own process that answers every call with
 * its request, and callers in this process. A benchmark of a gRPC service prints its rate beside this one to show how
 * much of the cost is the service and how much is the transport.
 */
const identity = (b: Buffer) => b;
const definition = {
  echo: {
    path: '/weft.bench.Echo/Echo',
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
    originalName: 'echo',
  },
};

const SERVER = `
  const grpc = require(${JSON.stringify(createRequire(import.meta.url).resolve('@grpc/grpc-js'))});
  const id = (b) => b;
  const server = new grpc.Server();
  server.addService({ echo: { path: '/weft.bench.Echo/Echo', requestStream: false, responseStream: false, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id } },
    { echo: (call, cb) => cb(null, call.request) });
  server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => { if (err) throw err; console.log(port); });
  process.stdin.on('end', () => process.exit(0)).resume();`;

type EchoClient = Client & { echo(req: Buffer, cb: (err: Error | null) => void): void };

export interface EchoServer {
  /** Calls per second with `concurrency` callers, each on its own channel, for `seconds`. */
  rate(concurrency: number, seconds: number): Promise<number>;
  /** Latency of calls arriving at `rate` per second for `seconds`, spread over `concurrency` channels in turn. */
  openLoop(rate: number, concurrency: number, seconds: number): Promise<{ p50: number; p99: number }>;
  stop(): void;
}

export async function startEchoServer(): Promise<EchoServer> {
  const child: ChildProcess = spawn(process.execPath, ['-e', SERVER], { stdio: ['pipe', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`the echo server exited with ${code}`)));
    child.stdout!.once('data', (d) => resolve(Number(String(d).trim())));
  });
  const Ctor = makeGenericClientConstructor(definition, 'Echo');
  const payload = Buffer.alloc(64, 1);
  return {
    async rate(concurrency, seconds) {
      const clients = Array.from(
        { length: concurrency },
        () => new Ctor(`127.0.0.1:${port}`, credentials.createInsecure()) as unknown as EchoClient,
      );
      const call = (c: EchoClient) => new Promise<void>((res, rej) => c.echo(payload, (e) => (e ? rej(e) : res())));
      await Promise.all(clients.map(call));
      let done = 0;
      const end = performance.now() + seconds * 1000;
      await Promise.all(
        clients.map(async (c) => {
          while (performance.now() < end) {
            await call(c);
            done++;
          }
        }),
      );
      clients.forEach((c) => c.close());
      return done / seconds;
    },
    async openLoop(rate, concurrency, seconds) {
      const clients = Array.from(
        { length: concurrency },
        () => new Ctor(`127.0.0.1:${port}`, credentials.createInsecure()) as unknown as EchoClient,
      );
      const call = (c: EchoClient) => new Promise<void>((res, rej) => c.echo(payload, (e) => (e ? rej(e) : res())));
      await Promise.all(clients.map(call));
      const r = await openLoopLatency(rate, seconds, (i) => call(clients[i % clients.length]!));
      clients.forEach((c) => c.close());
      return r;
    },
    stop() {
      child.stdin!.end();
      child.kill();
    },
  };
}
