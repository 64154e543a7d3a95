import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Metadata, status } from '@grpc/grpc-js';
import type { PromiseClient } from '../../lib/grpc/client.js';
import { ERROR_CODE_KEY } from '../../lib/grpc/status.js';
import { IpFamily, type IpamServiceService } from '../../gen/weft/ipam/v1/ipam.js';
import { createIpamPort } from './ipam-client.js';
import { IpamCallError } from './ports.js';

// The IPAM port turns IPAM's gRPC failures into what the use cases judge: the kind the runtime acts on, IPAM's error
// code, and whether IPAM may still finish the call. (The real client against a real IPAM: test/cni-error-codes.test.ts.)

const grpcError = (code: number, details: string, errorCode?: string) => {
  const metadata = new Metadata();
  if (errorCode) metadata.set(ERROR_CODE_KEY, errorCode);
  return Object.assign(new Error(`${code} ${status[code]}: ${details}`), { code, details, metadata });
};

function portFailingWith(err: unknown) {
  const seen: unknown[] = [];
  const fail = async (req: unknown, opts: unknown) => {
    seen.push({ req, opts });
    throw err;
  };
  const ipam = { allocate: fail, release: fail, listAllocations: fail, listPools: fail } as unknown as PromiseClient<
    typeof IpamServiceService
  >;
  return { port: createIpamPort({ ipam, node: 'node-a', target: 'cp:7400' }), seen };
}

describe('the IPAM port over gRPC', () => {
  it('maps each status to the kind the runtime acts on, and tells a call IPAM may still finish', async () => {
    const cases: [number, string, boolean][] = [
      [status.RESOURCE_EXHAUSTED, 'exhausted', false],
      [status.INVALID_ARGUMENT, 'invalid_argument', false],
      [status.UNAVAILABLE, 'unavailable', true],
      [status.DEADLINE_EXCEEDED, 'unavailable', true],
      [status.CANCELLED, 'failed_precondition', true],
      [status.NOT_FOUND, 'failed_precondition', false],
      [status.FAILED_PRECONDITION, 'failed_precondition', false],
    ];
    for (const [code, kind, unanswered] of cases) {
      const { port } = portFailingWith(grpcError(code, 'why', 'ipam.some_code'));
      await assert.rejects(
        port.release('c1/eth0'),
        (err: unknown) => {
          assert.ok(err instanceof IpamCallError);
          assert.deepEqual(
            [err.kind, err.unanswered, err.code, err.details],
            [kind, unanswered, 'ipam.some_code', 'why'],
          );
          assert.equal(err.message, `${code} ${status[code]}: why`);
          return true;
        },
        `status ${status[code]}`,
      );
    }
  });

  it('throws what is not a gRPC failure as it is', async () => {
    const bug = new TypeError('boom');
    await assert.rejects(portFailingWith(bug).port.nodeAllocations(), (err) => err === bug);
  });

  it('asks for every family in one Allocate with its deadline, and reads the answer by family', async () => {
    let seen: { req: Record<string, unknown>; opts: unknown } | undefined;
    const ipam = {
      allocate: async (req: Record<string, unknown>, opts: unknown) => {
        seen = { req, opts };
        return {
          allocations: [
            { family: IpFamily.IP_FAMILY_IPV6, address: 'fd00::7' },
            { family: IpFamily.IP_FAMILY_IPV4, address: '10.244.0.7' },
          ],
        };
      },
    } as unknown as PromiseClient<typeof IpamServiceService>;
    const port = createIpamPort({ ipam, node: 'node-a', target: 'cp:7400' });
    const got = await port.allocate({
      handle: 'c1/eth0',
      pool: '',
      families: [4, 6],
      addresses: [],
      podNamespace: 'shop',
      podName: 'cart-0',
      podUid: 'u1',
      containerId: 'c1',
      attemptId: 'a1',
    });
    assert.deepEqual(got, { ipv4: '10.244.0.7', ipv6: 'fd00::7' });
    assert.deepEqual(seen?.req.families, [IpFamily.IP_FAMILY_IPV4, IpFamily.IP_FAMILY_IPV6]);
    assert.equal(seen?.req.node, 'node-a');
    assert.equal(seen?.req.attemptId, 'a1');
    assert.deepEqual(seen?.opts, { timeoutMs: 20_000 });
  });

  it("follows ListAllocations' pages for this node", async () => {
    const pages: Record<string, { allocations: object[]; nextPageToken: string }> = {
      '': {
        allocations: [{ handle: 'a/eth0', containerId: 'a', address: '10.244.0.1', family: IpFamily.IP_FAMILY_IPV4 }],
        nextPageToken: 'p2',
      },
      p2: {
        allocations: [{ handle: 'a/eth0', containerId: 'a', address: 'fd00::1', family: IpFamily.IP_FAMILY_IPV6 }],
        nextPageToken: '',
      },
    };
    const asked: unknown[] = [];
    const ipam = {
      listAllocations: async (req: { pageToken: string }) => (asked.push(req), pages[req.pageToken]),
    } as unknown as PromiseClient<typeof IpamServiceService>;
    const all = await createIpamPort({ ipam, node: 'node-a', target: '' }).nodeAllocations();
    assert.deepEqual(
      all.map((a) => [a.address, a.family]),
      [
        ['10.244.0.1', 4],
        ['fd00::1', 6],
      ],
    );
    assert.deepEqual(asked, [
      { pool: '', node: 'node-a', pageSize: 5000, pageToken: '' },
      { pool: '', node: 'node-a', pageSize: 5000, pageToken: 'p2' },
    ]);
  });
});
