import { test } from 'node:test';
import assert from 'node:assert/strict';
import { controlPlaneGrpcTarget } from './endpoints.js';

test('one endpoint is a DNS target (a name may resolve to every replica); a unix socket stays as it is', () => {
  assert.equal(controlPlaneGrpcTarget('cp.weft.svc:7400'), 'dns:cp.weft.svc:7400');
  assert.equal(controlPlaneGrpcTarget(' 10.0.0.1:7400 '), 'dns:10.0.0.1:7400');
  assert.equal(controlPlaneGrpcTarget('[fd00::1]:7400'), 'dns:[fd00::1]:7400');
  assert.equal(controlPlaneGrpcTarget('unix:///run/weft/weft.sock'), 'unix:///run/weft/weft.sock');
});

test('several replicas by address are one ipv4: or ipv6: target, in the order given (grpc-js shuffles per channel)', () => {
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
