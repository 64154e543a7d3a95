import { createSocket } from 'node:dgram';
import { isIPv4, isIPv6 } from 'node:net';

/**
 * A DNS server for a test, on 127.0.0.1 (UDP, a free port): it answers A and AAAA queries for the names it is given,
 * with one record per address (as a Kubernetes headless Service or round-robin DNS does), NXDOMAIN for other names
 * and an empty answer for other types. Enough for resolvers pointed at it (c-ares: `dns.Resolver#setServers`); the
 * machine's own resolver configuration is not touched.
 */
export interface TestDnsServer {
  /** `127.0.0.1:port`. */
  address: string;
  /** How many queries it answered, by `name type` (e.g. `replicas.weft.test A`). */
  queries: Map<string, number>;
  close(): Promise<void>;
}

const TYPES: Record<number, string> = { 1: 'A', 28: 'AAAA', 16: 'TXT' };

export async function startDnsServer(names: Record<string, string[]>): Promise<TestDnsServer> {
  const zone = new Map(Object.entries(names).map(([n, a]) => [n.toLowerCase(), a]));
  const queries = new Map<string, number>();
  const socket = createSocket('udp4');
  socket.on('message', (msg, from) => {
    const reply = answer(msg, zone, queries);
    if (reply) socket.send(reply, from.port, from.address);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(0, '127.0.0.1', () => resolve());
  });
  return {
    address: `127.0.0.1:${socket.address().port}`,
    queries,
    close: () => new Promise((resolve) => socket.close(() => resolve())),
  };
}

/** The reply to one query (RFC 1035 §4.1), or null for a message that is not one. */
function answer(msg: Buffer, zone: Map<string, string[]>, queries: Map<string, number>): Buffer | null {
  if (msg.length < 12 || msg.readUInt16BE(4) !== 1) return null;
  const labels: string[] = [];
  let at = 12;
  while (at < msg.length && msg[at]! !== 0) {
    const len = msg[at]!;
    if (len > 63) return null; // compression in a question: not from a resolver we serve
    labels.push(msg.toString('latin1', at + 1, at + 1 + len));
    at += 1 + len;
  }
  const questionEnd = at + 5;
  if (questionEnd > msg.length) return null;
  const qtype = msg.readUInt16BE(at + 1);
  const name = labels.join('.').toLowerCase();
  const key = `${name} ${TYPES[qtype] ?? qtype}`;
  queries.set(key, (queries.get(key) ?? 0) + 1);
  const addresses = zone.get(name);
  const records = (addresses ?? []).filter((a) => (qtype === 1 ? isIPv4(a) : qtype === 28 ? isIPv6(a) : false));
  const header = Buffer.alloc(12);
  header.writeUInt16BE(msg.readUInt16BE(0), 0); // the query's id
  // QR, the query's RD, RA; NXDOMAIN for a name not in the zone.
  header.writeUInt16BE(0x8080 | (msg.readUInt16BE(2) & 0x0100) | (addresses ? 0 : 3), 2);
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(records.length, 6);
  const rrs = records.map((a) => {
    const rdata = qtype === 1 ? Buffer.from(a.split('.').map(Number)) : ipv6Bytes(a);
    const rr = Buffer.alloc(12);
    rr.writeUInt16BE(0xc00c, 0); // the name: a pointer to the question's
    rr.writeUInt16BE(qtype, 2);
    rr.writeUInt16BE(1, 4); // IN
    rr.writeUInt32BE(5, 6); // TTL 5 s
    rr.writeUInt16BE(rdata.length, 10);
    return Buffer.concat([rr, rdata]);
  });
  return Buffer.concat([header, msg.subarray(12, questionEnd), ...rrs]);
}

function ipv6Bytes(a: string): Buffer {
  const [head, tail] = a.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}
