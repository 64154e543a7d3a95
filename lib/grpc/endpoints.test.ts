import { test } from 'node:test';
import assert from 'node:assert/strict';
import { controlPlaneGrpcTarget, spreadTarget } from './endpoints.js';

test('one endpoint is a DNS target (a name may resolve to every replica); a unix socket stays as it is', () => {
  assert.equal(controlPlaneGrpcTarget('cp.weft.svc:7400'), 'dns:cp.weft.svc:7400');
  assert.equal(controlPlaneGrpcTarget(' 10.0.0.1:7400 '), 'dns:10.0.0.1:7400');
  assert.equal(controlPlaneGrpcTarget('[fd00::1]:7400'), 'dns:[fd00::1]:7400');
  assert.equal(controlPlaneGrpcTarget('unix:///run/weft/weft.sock'), 'unix:///run/weft/weft.sock');
});

test('several replicas by address are one ipv4: or ipv6: target, in the order given (each channel shuffles them: spreadTarget)', () => {
  assert.equal(
    controlPlaneGrpcTarget('10.0.0.1:7400,10.0.0.2:7401, 10.0.0.3:7400'),
    'ipv4:10.0.0.1:7400,10.0.0.2:7401,10.0.0.3:7400',
  );
  assert.equal(controlPlaneGrpcTarget('[fd00::1]:7400,[fd00::2]:7400'), 'ipv6:[fd00::1]:7400,[fd00::2]:7400');
});

test('what cannot make a target is refused with what to write instead', () => {
  const refused: [string, RegExp][] = [
    ['', /no control-plane endpoint/],
    ['cp-0.example:7400,cp-1.example:7400', /one DNS name that resolves to every replica/],
    ['10.0.0.1:7400,[fd00::1]:7400', /all IPv4 or all IPv6/],
    ['10.0.0.1', /not host:port/],
    ['10.0.0.1:0', /not host:port/],
    ['10.0.0.1:70000', /not host:port/],
    ['fd00::1:7400', /not host:port/],
    ['[cp.example]:7400', /only an IPv6 address goes in brackets/],
    ['unix:///a.sock,10.0.0.1:7400', /stands alone/],
  ];
  for (const [given, message] of refused) assert.throws(() => controlPlaneGrpcTarget(given), message, given);
});

test('each channel gets a list target in an order of its own, so that clients spread over the replicas', () => {
  const firsts = (target: string) => {
    const seen = new Map<string, number>();
    for (let i = 0; i < 400; i++) {
      const spread = spreadTarget(target);
      assert.deepEqual(spread.slice(5).split(',').sort(), target.slice(5).split(',').sort(), 'the same addresses');
      const first = spread.slice(5).split(',')[0]!;
      seen.set(first, (seen.get(first) ?? 0) + 1);
    }
    return seen;
  };
  // Two replicas: each first for about half of the channels (grpc-js's own shuffle leaves two as they are).
  const two = firsts('ipv4:10.0.0.1:7400,10.0.0.2:7400');
  assert.equal(two.size, 2);
  for (const n of two.values()) assert.ok(n > 120, `each first about half the time: ${JSON.stringify([...two])}`);
  const three = firsts('ipv6:[fd00::1]:7400,[fd00::2]:7400,[fd00::3]:7400');
  assert.equal(three.size, 3);
  for (const n of three.values())
    assert.ok(n > 70, `each first about a third of the time: ${JSON.stringify([...three])}`);
  // A draw of 0 each time: Fisher–Yates from the end, every place swapped with the first.
  assert.equal(
    spreadTarget('ipv4:a:1,b:1,c:1', () => 0),
    'ipv4:b:1,c:1,a:1',
  );
  for (const t of ['dns:cp.weft.svc:7400', 'ipv4:10.0.0.1:7400', 'unix:///run/weft/weft.sock'])
    assert.equal(spreadTarget(t), t, 'one address stays as it is');
});
