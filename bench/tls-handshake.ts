import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import http2 from 'node:http2';
import path from 'node:path';
import { checkServerIdentity, createSecureContext } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { createCa, issueCertificate, serverSubject } from '../lib/pki.js';
import { SERVER_NAME } from '../lib/grpc/credentials.js';
import { median, printTable, type Row } from './support.js';

/**
 * What one agent's connection costs the control plane and the agent, per Node runtime: a mutual-TLS HTTP/2
 * connection made as Weft's clients make it (ECDSA P-256 certificates from `lib/pki.ts`, the server name checked,
 * the client's certificate required and verified), against the floor of a plaintext HTTP/2 connection measured in the
 * same run. A control-plane restart makes every agent do this at once (bench/scale's restart part), and the
 * simulator does it for thousands of agents on one thread, so the runtime's TLS shows in those figures.
 *
 * `node dist/bench/tls-handshake.js` measures the Node it runs on and, when present, the Node 24 that
 * scripts/node24.mjs fetches (npm test's pretest): WEFT_BENCH_TLS_CONNECTIONS (1000) connections per round,
 * WEFT_BENCH_TLS_CONCURRENCY (32) at once, WEFT_BENCH_TLS_ROUNDS (5) rounds of each kind, alternating; medians.
 * The server runs in its own process on the same runtime, so each side's CPU is its own.
 */
const env = process.env;
const CONNECTIONS = Number(env.WEFT_BENCH_TLS_CONNECTIONS ?? 1000);
const CONCURRENCY = Number(env.WEFT_BENCH_TLS_CONCURRENCY ?? 32);
const ROUNDS = Number(env.WEFT_BENCH_TLS_ROUNDS ?? 5);
const here = fileURLToPath(import.meta.url);
const TICK_MS = 10; // USER_HZ 100

interface Pems {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** One round's figures: milliseconds of CPU per connection on each side, and connections a second. */
interface Round {
  clientMs: number;
  serverMs: number;
  perSec: number;
}

const cpuMsOf = (pid: number) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) * TICK_MS;
};

/** The server side: HTTP/2 over mutual TLS (or plaintext) on 127.0.0.1, its port on stdout; runs until stdin ends. */
function serve(pems: Pems, tls: boolean) {
  const onSession = (s: http2.ServerHttp2Session) => s.on('error', () => {});
  const server = tls
    ? http2.createSecureServer({
        key: pems.serverKey,
        cert: pems.serverCert,
        ca: pems.ca,
        requestCert: true,
        rejectUnauthorized: true,
      })
    : http2.createServer();
  server.on('session', onSession);
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`${JSON.stringify({ port: (server.address() as { port: number }).port })}\n`);
  });
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
}

/** Runs the rounds on this runtime against a server process of the same runtime; prints the rounds as JSON. */
async function measure(pems: Pems) {
  const start = async (tls: boolean) => {
    const child = spawn(process.execPath, [here, tls ? 'serve-tls' : 'serve-plain'], {
      stdio: ['pipe', 'pipe', 'inherit'],
      env: { ...env, WEFT_BENCH_TLS_PEMS: JSON.stringify(pems) },
    });
    const port = await new Promise<number>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`the server exited (${code})`)));
      child.stdout.once('data', (d: Buffer) => resolve((JSON.parse(d.toString()) as { port: number }).port));
    });
    return { child, port };
  };
  // One context for every connection, as grpc-js makes one per credentials object: the PEMs are parsed once.
  const clientContext = createSecureContext({ ca: pems.ca, cert: pems.clientCert, key: pems.clientKey });
  const tlsServer = await start(true);
  const plainServer = await start(false);
  const connectOnce = (tls: boolean, port: number) =>
    new Promise<void>((resolve, reject) => {
      const session = tls
        ? http2.connect(`https://127.0.0.1:${port}`, {
            secureContext: clientContext,
            servername: SERVER_NAME,
            checkServerIdentity: (_host, cert) => checkServerIdentity(SERVER_NAME, cert),
          })
        : http2.connect(`http://127.0.0.1:${port}`);
      session.once('error', reject);
      // Connected and the server's SETTINGS received: what a gRPC channel waits for before its first call.
      session.once('remoteSettings', () => {
        session.close();
        resolve();
      });
    });
  const round = async (tls: boolean): Promise<Round> => {
    const server = tls ? tlsServer : plainServer;
    const c0 = process.cpuUsage();
    const s0 = cpuMsOf(server.child.pid!);
    const t0 = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < CONNECTIONS) {
          next++;
          await connectOnce(tls, server.port);
        }
      }),
    );
    const wall = performance.now() - t0;
    // Let the server finish its side of the last closes before reading its CPU.
    await new Promise((r) => setTimeout(r, 200));
    const c = process.cpuUsage(c0);
    return {
      clientMs: (c.user + c.system) / 1000 / CONNECTIONS,
      serverMs: (cpuMsOf(server.child.pid!) - s0) / CONNECTIONS,
      perSec: (CONNECTIONS * 1000) / wall,
    };
  };
  // A warm-up of each kind, not counted.
  await round(true);
  await round(false);
  const rounds: { tls: Round[]; plain: Round[] } = { tls: [], plain: [] };
  for (let i = 0; i < ROUNDS; i++) {
    rounds.tls.push(await round(true));
    rounds.plain.push(await round(false));
  }
  tlsServer.child.stdin!.end();
  plainServer.child.stdin!.end();
  process.stdout.write(`${JSON.stringify({ versions: process.versions, rounds })}\n`);
}

async function main() {
  const mode = process.argv[2];
  if (mode === 'serve-tls' || mode === 'serve-plain')
    return serve(JSON.parse(env.WEFT_BENCH_TLS_PEMS!) as Pems, mode === 'serve-tls');
  if (mode === 'measure') return measure(JSON.parse(env.WEFT_BENCH_TLS_PEMS!) as Pems);

  const ca = await createCa();
  const server = await issueCertificate(ca, serverSubject());
  const client = await issueCertificate(ca, { kind: 'node', name: 'bench-node' });
  const pems: Pems = {
    ca: ca.cert,
    serverCert: server.cert,
    serverKey: server.key,
    clientCert: client.cert,
    clientKey: client.key,
  };
  const { node24Path } = (await import(path.resolve(path.dirname(here), '../../scripts/node24.mjs'))) as {
    node24Path: () => string;
  };
  const runtimes = [process.execPath];
  if (existsSync(node24Path()) && !process.version.startsWith('v24.')) runtimes.push(node24Path());
  else if (!process.version.startsWith('v24.'))
    process.stderr.write(`bench/tls-handshake: no Node 24 at ${node24Path()} (node scripts/node24.mjs fetches it)\n`);
  const rows: Row[] = [];
  for (const runtime of runtimes) {
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn(runtime, [here, 'measure'], {
        stdio: ['ignore', 'pipe', 'inherit'],
        env: { ...env, WEFT_BENCH_TLS_PEMS: JSON.stringify(pems) },
      });
      let text = '';
      child.stdout.on('data', (d: Buffer) => (text += d.toString()));
      child.once('close', (code) => (code === 0 ? resolve(text) : reject(new Error(`${runtime} exited ${code}`))));
    });
    const r = JSON.parse(out) as { versions: NodeJS.ProcessVersions; rounds: { tls: Round[]; plain: Round[] } };
    const med = (xs: Round[], k: keyof Round) => median(xs.map((x) => x[k]));
    const who = `Node ${r.versions.node} (OpenSSL ${r.versions.openssl})`;
    for (const side of ['clientMs', 'serverMs'] as const)
      rows.push({
        figure: `${who}: CPU per mutual-TLS connection, ${side === 'clientMs' ? 'client (agent)' : 'server (control plane)'}`,
        value: `${med(r.rounds.tls, side).toFixed(3)} ms`,
        baseline: `plaintext HTTP/2: ${med(r.rounds.plain, side).toFixed(3)} ms`,
        ratio: `${(med(r.rounds.tls, side) / med(r.rounds.plain, side)).toFixed(1)}x`,
      });
    rows.push({
      figure: `${who}: connections a second (${CONCURRENCY} at once)`,
      value: med(r.rounds.tls, 'perSec').toFixed(0),
      baseline: `plaintext HTTP/2: ${med(r.rounds.plain, 'perSec').toFixed(0)}`,
      ratio: `${(med(r.rounds.tls, 'perSec') / med(r.rounds.plain, 'perSec')).toFixed(2)}x`,
    });
  }
  printTable(
    `bench/tls-handshake — ${CONNECTIONS} connections per round, ${ROUNDS} rounds (medians), ECDSA P-256, client certificate required`,
    rows,
  );
}

main().catch((err: Error) => {
  process.stderr.write(`${err.stack ?? err.message}\n`);
  process.exit(1);
});
