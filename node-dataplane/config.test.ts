import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadSettings } from '../lib/config.js';
import { agentSettings } from './config.js';

test('the routing mode defaults to auto and takes vxlan, direct or auto', () => {
  assert.equal(loadSettings(agentSettings, {}).routingMode, 'auto');
  for (const mode of ['vxlan', 'direct', 'auto']) assert.equal(loadSettings(agentSettings, { WEFT_ROUTING_MODE: mode }).routingMode, mode);
});

test('an unknown routing mode stops the agent with a message that names the setting and the choices', () => {
  assert.throws(() => loadSettings(agentSettings, { WEFT_ROUTING_MODE: 'bgp' }), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.match(err.message, /WEFT_ROUTING_MODE="bgp": expected one of vxlan, direct, auto/);
    return true;
  });
});
