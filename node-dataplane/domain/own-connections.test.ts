import { test } from 'node:test';
import assert from 'node:assert/strict';
import { destroyArgs, ownConnectionsFrom, parseProcNetTcp } from './own-connections.js';

/** /proc/net/tcp as a little-endian kernel prints it: the agent's connection, another program's, a listener. */
const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0B0200C0:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0B0200C0:A8F1 010200C0:C383 01 00000000:00000000 02:000009C4 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0B0200C0:9C40 010200C0:0016 01 00000000:00000000 02:000009C4 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1
   3: 3F0200C0:A8F2 010200C0:C383 01 00000000:00000000 02:000009C4 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   4: 0B0200C0:A8F3 010200C0:C383 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000
`;
/** tcp6: the agent's IPv4 connection on a dual-stack socket (::ffff:192.0.2.11). */
const TCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000B0200C0:A8F4 0000000000000000FFFF0000010200C0:C383 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1
`;

test("the agent's own connections from the old address, named by their four-tuples; others' connections, listeners and other addresses are left", () => {
  const sockets = [...parseProcNetTcp(TCP, 4, true), ...parseProcNetTcp(TCP6, 6, true)];
  assert.deepEqual(sockets[1], {
    family: 4,
    local: '192.0.2.11',
    localPort: 43249,
    remote: '192.0.2.1',
    remotePort: 50051,
    state: 1,
    inode: 1002,
  });
  assert.equal(sockets.length, 6);
  // Inodes 1001-1004 are the agent's (its listener, two connections, one from the new address); 2002 is ssh's.
  const own = ownConnectionsFrom(sockets, new Set([1001, 1002, 1003, 1004]), '192.0.2.11');
  assert.deepEqual(
    own.map((s) => s.inode),
    [1002, 1004],
    "not the listener, not ssh's connection, not the one from the new address, not TIME_WAIT",
  );
  assert.deepEqual(destroyArgs(own), [
    '-K',
    '-t',
    '-n',
    '(',
    'src',
    '192.0.2.11:43249',
    'and',
    'dst',
    '192.0.2.1:50051',
    ')',
    'or',
    '(',
    'src',
    '[::ffff:c000:20b]:43252',
    'and',
    'dst',
    '[::ffff:c000:201]:50051',
    ')',
  ]);
  assert.equal(destroyArgs([]), null, "nothing of the agent's there: ss is not run");
});

test('a big-endian kernel prints the address words in network order', () => {
  const [s] = parseProcNetTcp(
    '   0: C000020B:A8F1 C0000201:C383 01 00000000:00000000 00:00000000 00000000 0 0 7 1\n',
    4,
    false,
  );
  assert.deepEqual([s!.local, s!.remote], ['192.0.2.11', '192.0.2.1']);
});
