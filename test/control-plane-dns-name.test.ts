// Before @grpc/grpc-js loads: its resolver asks the test's DNS server (see the module).
import './support/grpc-dns-server-resolution.js';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Metadata } from '@grpc/grpc-js';
import { createClient, type PromiseClient } from '../lib/grpc/client.js';
import { IpamServiceService, ListPoolsRequest } from '../gen/weft/ipam/v1/ipam.js';
import { createTestDatabase, type TestDatabase } from './support/database.js';
import { startReplicaProcess, testPki, type ReplicaProcess, type TestPki } from './support/control-plane.js';
import { startDnsServer, type TestDnsServer } from './support/dns-server.js';

/**
 * Control-plane endpoints given as one DNS name that resolves to several replicas (lib/grpc/endpoints.ts), as a
 * Kubernetes headless Service or round-robin DNS gives them: two `weft up` replicas on one PostgreSQL, at 127.0.0.1
 * and 127.0.0.2 on one port, and a DNS server of the test's own answering `replicas.weft.test` with both addresses.
 * One client channel on that name uses one replica; when that replica is SIGKILLed, the same channel's next calls go to
 * the other address, and writes work there.
 *
 * The name is served by a real DNS server (UDP, on 127.0.0.1) that grpc-js is pointed at by its target
 * (`dns://server/name:port`), since the machine's own resolver configuration is not the test's to change. `localhost`
 * would be the other way to get two addresses without one (127.0.0.1 and ::1), but where /etc/hosts names only
 * 127.0.0.1 for it (many containers) it resolves to one. With two addresses grpc-js keeps the resolver's order
 * (lib/grpc/endpoints.ts: spreadTarget), so the channel starts on the first; the test does not rely on which.
 */
const NAME = 'replicas.weft.test';
const MOVE_BOUND_MS = 10_000;

let db: TestDatabase;
let pki: TestPki;
let dns: TestDnsServer;
const replicas: (ReplicaProcess & { host: string })[] = [];
const closers: (() => void)[] = [];

async function startReplica(host: string, port: number): Promise<number> {
  const r = await startReplicaProcess({ db, pki, listen: `${host}:${port}`, name: 'dns-replica' });
  replicas.push({ host, ...r });
  return r.port;
}

before(async () => {
  db = await createTestDatabase();
  pki = await testPki();
  dns = await startDnsServer({ [NAME]: ['127.0.0.1', '127.0.0.2'] });
});

after(async () => {
  for (const c of closers) c();
  await Promise.all(replicas.map((r) => r.close()));
  await dns?.close();
  await db?.drop();
});

/** A ListPools call on the client's channel, and the address of the replica that answered it. */
function answeredBy(client: PromiseClient<typeof IpamServiceService>): Promise<string> {
  const d = IpamServiceService.listPools;
  return new Promise((resolve, reject) => {
    const call = client.raw.makeUnaryRequest(
      d.path,
      d.requestSerialize,
      d.responseDeserialize,
      ListPoolsRequest.fromPartial({}),
      new Metadata(),
      { deadline: Date.now() + 2000 },
      (err) => (err ? reject(err) : resolve(call.getPeer().replace(/:\d+$/, ''))),
    );
  });
}

test('one DNS name resolving to two replicas: the channel uses one, and moves to the other address when it is SIGKILLed', async () => {
  const port = await startReplica('127.0.0.1', 0);
  await startReplica('127.0.0.2', port);
  const client = createClient(IpamServiceService, `dns://${dns.address}/${NAME}:${port}`, { security: pki.admin });
  closers.push(() => client.close());
  await client.createPool({ name: 'dns', cidr: '10.73.0.0/24', blockPrefixLength: 28 });

  // pick_first: every call of the channel goes to the replica it connected to.
  const first = await answeredBy(client);
  for (let i = 0; i < 5; i++) assert.equal(await answeredBy(client), first, 'calls stay on one replica');
  assert.ok(['127.0.0.1', '127.0.0.2'].includes(first), `answered by ${first}`);
  assert.ok((dns.queries.get(`${NAME} A`) ?? 0) >= 1, `the name was asked for: ${JSON.stringify([...dns.queries])}`);

  const killedAt = Date.now();
  replicas.find((r) => r.host === first)!.proc.child.kill('SIGKILL');
  // The same channel's next calls: a call may fail UNAVAILABLE while the connection is found broken, then the other.
  let refused = 0;
  let second = '';
  while (Date.now() - killedAt < MOVE_BOUND_MS) {
    try {
      second = await answeredBy(client);
      break;
    } catch (err) {
      assert.equal((err as { code?: number }).code, 14, `only UNAVAILABLE while moving: ${String(err)}`);
      refused++;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  const movedMs = Date.now() - killedAt;
  assert.ok(second !== '', `the channel answered again within ${MOVE_BOUND_MS} ms`);
  assert.notEqual(second, first, 'the other address of the name answered');
  const { allocation } = await client.allocate({ handle: 'after-kill/eth0', node: 'n1', pool: 'dns' });
  assert.ok(allocation?.address.startsWith('10.73.0.'), 'writes work on the other replica');
  process.stdout.write(
    `# dns name: ${NAME} -> 127.0.0.1, 127.0.0.2; channel on ${first}, after its SIGKILL on ${second} in ${movedMs} ms (${refused} calls refused meanwhile)\n`,
  );
});
