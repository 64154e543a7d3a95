import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import { createClient } from '../lib/grpc/client.js';
import { clientTlsDir } from '../lib/grpc/credentials.js';
import { errorCodeOf } from '../lib/grpc/errors.js';
import { describeCertificate } from '../lib/pki.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { CertificateServiceService } from '../gen/weft/auth/v1/auth.js';
import { bin } from './support/processes.js';
import { eventually } from './support/eventually.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/**
 * Revocation and the audit of refusals on the real control plane (real PostgreSQL, mTLS with certificates of its CA,
 * gRPC and the HTTP gateway), driven through `weft ca issue|revoke`, `weft token revoke` and `weft audit` as an
 * operator would: a revoked certificate is refused on the next call of a connection already open and its watch
 * streams end, a certificate issued afterwards works, a revoked token's stream ends, refusals are in the audit log
 * (bounded per caller), and a token flooding the HTTP gateway gets 429.
 */
const run = promisify(execFile);
let cp: TestControlPlane;
let scratch: string;
const closers: { close(): void }[] = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function weft(args: string[], env: Record<string, string> = {}): Promise<string> {
  const { stdout } = await run(bin.weft, [...args, '--server', cp.address, '--tls-dir', cp.tlsDir], {
    timeout: 30_000,
    env: { ...process.env, WEFT_PKI_DIR: cp.pki.pkiDir, ...env },
  });
  return stdout;
}

/** `weft ca issue` for a node, as an operator runs it: the certificate is recorded by the control plane. */
async function issueNode(name: string, into?: string): Promise<{ dir: string; serial: string }> {
  const dir = into ?? path.join(scratch, `${name}-${Date.now()}`);
  const out = JSON.parse(await weft(['ca', 'issue', '--node', name, '--out', dir, '--json'])) as {
    serialNumber: string;
    recorded: boolean;
  };
  assert.equal(out.recorded, true, 'weft ca issue records what it issued');
  return { dir, serial: out.serialNumber.toLowerCase().replace(/^0+/, '') };
}

function clientsAs(dir: string, token?: string) {
  // Files re-read every 250 ms: a certificate replaced on disk is what the next connection presents.
  const security = clientTlsDir(dir, 250);
  const c = {
    ipam: createClient(IpamServiceService, cp.address, { security, token }),
    routes: createClient(RoutesServiceService, cp.address, { security, token }),
    policy: createClient(PolicyServiceService, cp.address, { security, token }),
  };
  closers.push(c.ipam, c.routes, c.policy);
  return c;
}

/** A stream read in the background: resolves `first` with its first message, `ended` with how and when it ended. */
function follow(stream: AsyncIterable<unknown>) {
  let gotFirst!: () => void;
  const first = new Promise<void>((r) => (gotFirst = r));
  const ended = (async () => {
    try {
      for await (const msg of stream) {
        void msg;
        gotFirst();
      }
      return { code: status.OK, details: 'ended without an error', at: Date.now() };
    } catch (err) {
      const e = err as { code: number; details: string };
      return { code: e.code, details: e.details, errorCode: errorCodeOf(err), at: Date.now() };
    }
  })();
  return { first, ended };
}

async function refusal(p: Promise<unknown>): Promise<{ code: number; details: string; errorCode?: string }> {
  try {
    await p;
  } catch (err) {
    const e = err as { code: number; details: string };
    return { code: e.code, details: e.details, errorCode: errorCodeOf(err) };
  }
  return { code: status.OK, details: '' };
}

/** A token's WatchBlockAffinities over the HTTP gateway (newline-delimited JSON), open: `ended` gives its lines and when. */
async function watchOverHttp(
  secret: string,
  signal: AbortSignal,
): Promise<{ ended: Promise<{ lines: string[]; at: number }> }> {
  const res = await fetch(`${cp.httpUrl}/weft.ipam.v1.IpamService/WatchBlockAffinities`, {
    method: 'POST',
    signal,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
    body: '{}',
  });
  assert.equal(res.status, 200);
  const ended = (async () => {
    const lines: string[] = [];
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(chunk, { stream: true });
        lines.push(...buf.split('\n').slice(0, -1));
        buf = buf.slice(buf.lastIndexOf('\n') + 1);
      }
    } catch {
      // aborted
    }
    return { lines, at: Date.now() };
  })();
  return { ended };
}

type Event = { time: string; actor: string; method: string; resource: string; result: string; message: string };
const audit = async (...args: string[]) => JSON.parse(await weft(['audit', '--json', ...args])) as Event[];

before(async () => {
  cp = await startTestControlPlane({ settings: { limitTokenRate: '1', limitTokenBurst: '8' } });
  scratch = mkdtempSync(path.join(tmpdir(), 'weft-revocation-'));
  const ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  await ipam.createPool({ name: 'p', cidr: '10.61.0.0/16', blockPrefixLength: 26 });
  ipam.close();
});
after(async () => {
  for (const c of closers) c.close();
  await cp?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

test('a revoked node certificate is refused on new calls of an open connection, its watches end, and a certificate issued afterwards works', async () => {
  const old = await issueNode('rv1');
  const node = clientsAs(old.dir);
  await node.routes.registerNode({ name: 'rv1', underlayAddress: '192.0.2.41', vtepMac: '02:00:c0:00:02:29' });
  const ac = new AbortController();
  try {
    const routes = follow(node.routes.watchRoutes({ node: 'rv1', acceptChunks: true }, { signal: ac.signal }));
    const policy = follow(node.policy.watchNodePolicy({ node: 'rv1', sinceRevision: 0 }, { signal: ac.signal }));
    await Promise.all([routes.first, policy.first]);
    await node.ipam.listPools({});

    const revoked = await weft(['ca', 'revoke', '--node', 'rv1', '--reason', 'key lost']);
    const revokedAt = Date.now();
    assert.match(revoked, new RegExp(`revoked ${old.serial} \\(node:rv1`));

    // The same client, its connection already open: the next call is refused within a couple of seconds.
    const refused = await eventually(
      'the revoked certificate is refused',
      async () => {
        const r = await refusal(node.ipam.listPools({}));
        return r.code === status.UNAUTHENTICATED ? r : undefined;
      },
      5000,
      100,
    );
    assert.ok(Date.now() - revokedAt < 3000, `refused ${Date.now() - revokedAt} ms after the revocation`);
    assert.equal(refused.errorCode, 'auth.certificate_revoked');
    assert.match(
      refused.details,
      new RegExp(`serial ${old.serial} \\(node:rv1\\) was revoked at .* \\(key lost\\): get a new certificate`),
    );

    // Both watch streams opened before the revocation end with UNAUTHENTICATED within seconds.
    for (const [what, s] of [
      ['WatchRoutes', routes],
      ['WatchNodePolicy', policy],
    ] as const) {
      const end = await Promise.race([s.ended, sleep(5000).then(() => null)]);
      assert.ok(end, `${what} still runs 5 s after the revocation`);
      assert.equal(end.code, status.UNAUTHENTICATED, `${what}: ${end.details}`);
      assert.match(end.details, /stream ended: the client certificate with serial .* was revoked/);
      assert.ok(end.at - revokedAt < 4000, `${what} ended ${end.at - revokedAt} ms after the revocation`);
    }

    // A certificate issued after the revocation, written over the old files, is accepted: the same clients (as an agent
    // keeps them) connect anew once refused for the revoked one, calls and watches alike.
    const fresh = await issueNode('rv1', old.dir);
    assert.notEqual(fresh.serial, old.serial);
    await eventually(
      'the same client, with the new certificate on disk, is accepted',
      async () => {
        await node.ipam.listPools({});
        return true;
      },
      5000,
      100,
    );
    const again = follow(node.routes.watchRoutes({ node: 'rv1', acceptChunks: true }, { signal: ac.signal }));
    await again.first;
    await sleep(2500);
    assert.equal(await Promise.race([again.ended.then(() => 'ended'), sleep(10).then(() => 'running')]), 'running');

    // The refusals and the certificate's life are in the audit log.
    const denied = await eventually(
      'the refusals in the audit log',
      async () => {
        const events = await audit('--result', 'denied', '--actor', 'node:rv1');
        return events.length > 0 ? events : undefined;
      },
      5000,
    );
    assert.ok(
      denied.every((e) => e.result === 'UNAUTHENTICATED' && /^from 127\.0\.0\.1:\d+: /.test(e.message)),
      JSON.stringify(denied),
    );
    assert.ok(denied.some((e) => e.method === '/weft.ipam.v1.IpamService/ListPools'));
    assert.ok(
      denied.some((e) => e.method === '/weft.routes.v1.RoutesService/WatchRoutes' && /stream ended/.test(e.message)),
    );
    const lifecycle = await eventually(
      'issue and revocation in the audit log',
      async () => {
        const events = await audit('--resource', 'certificate/node:rv1/');
        return events.length >= 3 ? events : undefined;
      },
      5000,
    );
    assert.deepEqual(
      lifecycle.map((e) => [e.method.split('/').pop(), e.actor, e.result]),
      [
        ['RecordCertificate', 'admin:test', 'OK'],
        ['RevokeCertificates', 'admin:test', 'OK'],
        ['RecordCertificate', 'admin:test', 'OK'],
      ],
    );
  } finally {
    ac.abort();
  }
});

test('one certificate is revoked by serial or by its file; the others of the identity keep working', async () => {
  const a = await issueNode('rv2');
  const b = await issueNode('rv2');
  const c = await issueNode('rv2');
  await weft(['ca', 'revoke', '--serial', a.serial.toUpperCase()]);
  await weft(['ca', 'revoke', '--cert', path.join(b.dir, 'tls.crt'), '--reason', 'decommissioned']);
  assert.match(await weft(['ca', 'revoke', '--serial', a.serial]), /already revoked/);
  const [ca, cb, cc] = [clientsAs(a.dir), clientsAs(b.dir), clientsAs(c.dir)];
  await eventually(
    'both revoked',
    async () =>
      (await refusal(ca.ipam.listPools({}))).code === status.UNAUTHENTICATED &&
      (await refusal(cb.ipam.listPools({}))).code === status.UNAUTHENTICATED,
    5000,
    100,
  );
  await cc.ipam.listPools({});
  const list = createClient(CertificateServiceService, cp.address, { security: cp.security });
  closers.push(list);
  const listed = (await list.listCertificates({ identity: 'node:rv2' })).certificates;
  assert.deepEqual(new Set(listed.filter((x) => x.revokeTime).map((x) => x.serial)), new Set([a.serial, b.serial]));
  assert.equal(listed.find((x) => x.serial === b.serial)!.revokeReason, 'decommissioned');
  assert.equal(
    describeCertificate(readFileSync(path.join(c.dir, 'tls.crt'), 'utf8'))
      .serialNumber.toLowerCase()
      .replace(/^0+/, ''),
    c.serial,
  );
});

test('weft ca revoke says what is wrong with its arguments', async () => {
  const usage = (args: string[]) =>
    assert.rejects(
      weft(['ca', 'revoke', ...args]),
      (e: { code: number; stderr: string }) => e.code === 2 && /exactly one certificate or identity/.test(e.stderr),
    );
  await usage([]);
  await usage(['--node', 'a', '--serial', 'ab']);
  await assert.rejects(
    weft(['ca', 'revoke', '--serial', 'not-hex']),
    (e: { code: number; stderr: string }) =>
      e.code === 1 && /serial "not-hex" is not a certificate serial number/.test(e.stderr),
  );
  await assert.rejects(
    weft(['ca', 'revoke', '--node', 'never-issued']),
    (e: { code: number; stderr: string }) =>
      e.code === 1 && /no unexpired certificate of node:never-issued is recorded/.test(e.stderr),
  );
});

test('a stream opened with an API token ends once the token is revoked', async () => {
  const host = await issueNode('tk-host');
  const secret = await cp.createToken('watcher', ['read']);
  const viaToken = clientsAs(host.dir, secret);
  const ac = new AbortController();
  try {
    const s = follow(viaToken.routes.watchRoutes({ node: 'tk-host', acceptChunks: true }, { signal: ac.signal }));
    await s.first;
    // The same token's stream over the HTTP gateway (newline-delimited JSON), read to its end.
    const httpLines = (await watchOverHttp(secret, ac.signal)).ended;
    await weft(['token', 'revoke', 'watcher']);
    const revokedAt = Date.now();
    const end = await Promise.race([s.ended, sleep(5000).then(() => null)]);
    assert.ok(end, 'the stream still runs 5 s after its token was revoked');
    assert.equal(end.code, status.UNAUTHENTICATED, end.details);
    assert.match(end.details, /stream ended: token watcher was revoked at/);
    assert.ok(end.at - revokedAt < 4000, `ended ${end.at - revokedAt} ms after the revocation`);
    const http = await Promise.race([httpLines, sleep(5000).then(() => null)]);
    assert.ok(http, 'the HTTP stream still runs 5 s after its token was revoked');
    assert.ok(http.lines.length >= 2, 'it streamed before');
    assert.match(http.lines.at(-1)!, /"code":"UNAUTHENTICATED","message":"stream ended: token watcher was revoked at/);
  } finally {
    ac.abort();
  }
});

test('a stream opened with an API token ends when the token expires, over gRPC and over the HTTP gateway', async () => {
  const host = await issueNode('tk-expiry');
  const secret = await cp.createToken('short-lived', ['read'], 3);
  const expiresAt = Date.now() + 3000;
  const viaToken = clientsAs(host.dir, secret);
  const ac = new AbortController();
  try {
    const s = follow(viaToken.routes.watchRoutes({ node: 'tk-expiry', acceptChunks: true }, { signal: ac.signal }));
    await s.first;
    const httpLines = (await watchOverHttp(secret, ac.signal)).ended;
    const end = await Promise.race([s.ended, sleep(8000).then(() => null)]);
    assert.ok(end, 'the gRPC stream still runs 5 s after its token expired');
    assert.equal(end.code, status.UNAUTHENTICATED, end.details);
    assert.match(end.details, /stream ended: token short-lived expired at .*: ask an administrator for a new one/);
    assert.ok(end.at >= expiresAt - 1500, `ended ${expiresAt - end.at} ms before the token's expiry`);
    assert.ok(end.at - expiresAt < 2000, `ended ${end.at - expiresAt} ms after the token's expiry`);
    const http = await Promise.race([httpLines, sleep(5000).then(() => null)]);
    assert.ok(http, 'the HTTP stream still runs well after its token expired');
    assert.match(http.lines.at(-1)!, /"code":"UNAUTHENTICATED","message":"stream ended: token short-lived expired at/);
    // And a new call with it is refused.
    const again = await refusal(viaToken.ipam.listPools({}, { timeoutMs: 5000 }));
    assert.equal(again.code, status.UNAUTHENTICATED);
    assert.match(again.details, /token short-lived expired at/);
  } finally {
    ac.abort();
  }
});

test('a flood of refused calls is in the audit log, bounded per caller, with a count of what was not recorded one by one', async () => {
  const flood = clientsAs((await issueNode('flooder')).dir);
  const N = 60;
  const outcomes = await Promise.all(
    Array.from({ length: N }, () =>
      refusal(
        flood.routes.registerNode({
          name: 'someone-else',
          underlayAddress: '192.0.2.99',
          vtepMac: '02:00:c0:00:02:63',
        }),
      ),
    ),
  );
  assert.ok(outcomes.every((o) => o.code === status.PERMISSION_DENIED));
  const events = await eventually(
    'the flood and its summary in the audit log',
    async () => {
      const e = await audit('--result', 'denied', '--actor', 'node:flooder');
      const counted = e.reduce(
        (n, x) => n + (x.result === 'SUPPRESSED' ? Number(/^(\d+) more refused calls/.exec(x.message)![1]) : 1),
        0,
      );
      return counted === N ? e : undefined;
    },
    10_000,
  );
  const rows = events.filter((e) => e.result === 'PERMISSION_DENIED');
  const summaries = events.filter((e) => e.result === 'SUPPRESSED');
  const perSecond = new Map<number, number>();
  for (const e of rows)
    perSecond.set(
      Math.floor(Date.parse(e.time) / 1000),
      (perSecond.get(Math.floor(Date.parse(e.time) / 1000)) ?? 0) + 1,
    );
  assert.ok(
    [...perSecond.values()].every((n) => n <= 5),
    `rows per second: ${[...perSecond.values()].join(',')}`,
  );
  assert.ok(summaries.length >= 1, 'what was not recorded is counted');
  assert.match(
    summaries[0]!.message,
    /PERMISSION_DENIED x\d+; methods: \/weft\.routes\.v1\.RoutesService\/RegisterNode/,
  );
  assert.match(rows[0]!.message, /^from 127\.0\.0\.1:\d+: node flooder may only register itself/);
});

test('a token flooding the HTTP gateway gets 429 with Retry-After, from the budget it has over gRPC too', async () => {
  const secret = await cp.createToken('http-flood', ['read']);
  const grpc = clientsAs((await issueNode('http-flood-host')).dir, secret);
  // Connected before the flood (no call: every call of the token counts), so that the check below follows it closely.
  const raw = (grpc.ipam as unknown as { raw: { waitForReady(deadline: number, cb: (err?: Error) => void): void } })
    .raw;
  await new Promise<void>((resolve, reject) =>
    raw.waitForReady(Date.now() + 10_000, (err) => (err ? reject(err) : resolve())),
  );
  const call = () =>
    fetch(`${cp.httpUrl}/weft.ipam.v1.IpamService/ListPools`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
      body: '{}',
    });
  const statuses: number[] = [];
  let limited: Response | null = null;
  for (let i = 0; i < 20; i++) {
    const res = await call();
    statuses.push(res.status);
    if (res.status === 429 && !limited) limited = res;
    else await res.body?.cancel();
  }
  assert.deepEqual(statuses.slice(0, 8), Array(8).fill(200), 'the burst passes');
  assert.ok(limited, `no 429 in ${statuses.join(',')}`);
  assert.ok(Number(limited.headers.get('retry-after')) >= 1, `Retry-After: ${limited.headers.get('retry-after')}`);
  assert.equal(limited.headers.get('content-type'), 'application/json');
  const body = (await limited.json()) as { code: string; errorCode: string; message: string; retryAfterMs: number };
  assert.equal(body.code, 'RESOURCE_EXHAUSTED');
  assert.equal(body.errorCode, 'auth.rate_limited');
  assert.match(body.message, /token:http-flood calls faster than the 1 calls\/s \(burst 8\)/);
  assert.ok(body.retryAfterMs > 0);
  // One budget per identity: the same token over gRPC is refused too (with budgets of their own, all 5 would pass the
  // burst of 8; the shared one has refilled at 1 call/s since the flood).
  const r = await Promise.all(Array.from({ length: 5 }, () => refusal(grpc.ipam.listPools({}))));
  assert.ok(r.filter((x) => x.code === status.RESOURCE_EXHAUSTED).length >= 3, r.map((x) => status[x.code]).join(','));
  const events = await eventually(
    'the 429s in the audit log',
    async () => {
      const e = await audit('--result', 'RESOURCE_EXHAUSTED', '--actor', 'token:http-flood');
      return e.length > 0 ? e : undefined;
    },
    5000,
  );
  assert.match(events[0]!.message, /^from (::ffff:)?127\.0\.0\.1:\d+: token:http-flood calls faster/);
});
