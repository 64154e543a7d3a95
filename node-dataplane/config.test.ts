import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadSettings } from '../lib/config.js';
import { agentSettings } from './config.js';

test('the routing mode defaults to auto and takes vxlan, direct or auto', () => {
  assert.equal(loadSettings(agentSettings, {}).routingMode, 'auto');
  for (const mode of ['vxlan', 'direct', 'auto'])
    assert.equal(loadSettings(agentSettings, { WEFT_ROUTING_MODE: mode }).routingMode, mode);
});

test('an unknown routing mode stops the agent with a message that names the setting and the choices', () => {
  assert.throws(
    () => loadSettings(agentSettings, { WEFT_ROUTING_MODE: 'bgp' }),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.message, /WEFT_ROUTING_MODE="bgp": expected one of vxlan, direct, auto/);
      return true;
    },
  );
});

test('pods are IPv4 by default; WEFT_POD_FAMILIES=ipv4,ipv6 makes them dual-stack, in any order', () => {
  assert.deepEqual(loadSettings(agentSettings, {}).podFamilies, ['ipv4']);
  assert.deepEqual(loadSettings(agentSettings, { WEFT_POD_FAMILIES: 'ipv4,ipv6' }).podFamilies, ['ipv4', 'ipv6']);
  assert.deepEqual(loadSettings(agentSettings, { WEFT_POD_FAMILIES: ' IPv6 , ipv4' }).podFamilies, ['ipv4', 'ipv6']);
});

test('a bad WEFT_POD_FAMILIES stops the agent with a message that says what to write', () => {
  for (const [raw, msg] of [
    ['ipv5', /unknown address family "ipv5"/],
    ['ipv6', /IPv6-only pods are not supported yet/],
    ['ipv4,ipv4', /named twice/],
  ] as const) {
    assert.throws(
      () => loadSettings(agentSettings, { WEFT_POD_FAMILIES: raw }),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.match(err.message, /WEFT_POD_FAMILIES=/);
        assert.match(err.message, msg);
        return true;
      },
    );
  }
});

test("the host's sysctls and sysfs are /proc/sys/net and /sys unless WEFT_PROC_SYS_NET and WEFT_SYS_DIR name hostPath mounts", () => {
  const defaults = loadSettings(agentSettings, {});
  assert.deepEqual([defaults.procSysNet, defaults.sysDir], ['/proc/sys/net', '/sys']);
  const mounted = loadSettings(agentSettings, { WEFT_PROC_SYS_NET: '/host/proc/sys/net', WEFT_SYS_DIR: '/host/sys' });
  assert.deepEqual([mounted.procSysNet, mounted.sysDir], ['/host/proc/sys/net', '/host/sys']);
  for (const env of ['WEFT_PROC_SYS_NET', 'WEFT_SYS_DIR']) {
    assert.throws(
      () => loadSettings(agentSettings, { [env]: 'host/sys' }),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.match(err.message, new RegExp(`${env}="host/sys": expected an absolute path`));
        return true;
      },
    );
  }
});
