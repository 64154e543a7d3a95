import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { isIP } from 'node:net';
import {
  SUPPORTED_VERSIONS,
  parseNetworkConfig,
  readAttachOptions,
  readDns,
  readValidAttachments,
  type NetworkConfig,
} from './config.js';
import { CniCode, CniError } from './errors.js';
import { parseCniArgs, readInvocation, type Command } from './skel.js';

/**
 * Property tests of what the runtime hands weft-cni: stdin (the network config) and the CNI_* environment. Any input
 * either parses or fails with a CniError carrying one of the CNI codes (so the runtime gets the error JSON, never
 * code 999 "failed unexpectedly"); what parses keeps the promises the parsers make.
 */
const RUNS = { numRuns: 300, interruptAfterTimeLimit: 2000, includeErrorInReport: true };
const CODES = new Set<number>(Object.values(CniCode));

/** Runs f; a thrown value must be a CniError with a known code and a message. */
function parsesOrCniError<T>(f: () => T): T | undefined {
  try {
    return f();
  } catch (err) {
    if (!(err instanceof CniError)) throw new Error(`threw ${String(err)} instead of a CniError`, { cause: err });
    assert.ok(CODES.has(err.code), `unknown CNI code ${err.code}`);
    assert.ok(err.message.length > 0);
    return undefined;
  }
}

const field = <T>(valid: fc.Arbitrary<T>) =>
  fc.oneof({ arbitrary: valid, weight: 8 }, fc.jsonValue(), fc.constant(undefined));
const ip = fc.oneof(fc.ipV4(), fc.ipV6(), fc.string({ maxLength: 12 }));
const mac = fc.oneof(fc.stringMatching(/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/), fc.string({ maxLength: 20 }));
/** Configs shaped like Weft's, each field sometimes anything JSON can hold or missing. */
const configObject = fc.record(
  {
    cniVersion: field(fc.constantFrom(...SUPPORTED_VERSIONS, '0.2.0', '2.0.0', '')),
    name: field(fc.oneof(fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,20}$/), fc.string())),
    type: field(fc.constantFrom('weft', '')),
    agentSocket: field(
      fc.oneof(
        fc.constant('/run/weft/agent.sock'),
        fc.string({ unit: 'binary', maxLength: 130 }).map((s) => `/${s}`),
        fc.string(),
      ),
    ),
    pool: field(fc.string({ maxLength: 10 })),
    runtimeConfig: field(
      fc.record({ mac: field(mac), ips: field(fc.array(field(ip), { maxLength: 3 })) }, { requiredKeys: [] }),
    ),
    args: field(
      fc.record(
        {
          cni: field(
            fc.record({ mac: field(mac), ips: field(fc.array(field(ip), { maxLength: 3 })) }, { requiredKeys: [] }),
          ),
        },
        { requiredKeys: [] },
      ),
    ),
    dns: field(
      fc.record(
        {
          nameservers: field(fc.array(field(ip), { maxLength: 3 })),
          domain: field(fc.string()),
          search: field(fc.array(fc.string())),
          options: field(fc.array(fc.string())),
        },
        { requiredKeys: [] },
      ),
    ),
    'cni.dev/valid-attachments': field(
      fc.array(
        field(fc.record({ containerID: field(fc.string()), ifname: field(fc.string()) }, { requiredKeys: [] })),
        { maxLength: 3 },
      ),
    ),
  },
  { requiredKeys: ['cniVersion', 'name', 'type'] },
);

/** Checks the promises of parseNetworkConfig and of the readers each verb calls on its result. */
function checkAccepted(cfg: NetworkConfig): void {
  assert.ok(Object.isFrozen(cfg));
  assert.ok(SUPPORTED_VERSIONS.includes(cfg.cniVersion));
  assert.match(cfg.name, /^[A-Za-z0-9][A-Za-z0-9_.-]*$/);
  assert.ok(typeof cfg.type === 'string' && cfg.type !== '');
  assert.ok(
    cfg.agentSocket.startsWith('/') && Buffer.byteLength(cfg.agentSocket) <= 107,
    `agentSocket ${JSON.stringify(cfg.agentSocket)}`,
  );
  assert.equal(typeof cfg.pool, 'string');
  for (const o of [cfg.runtimeConfig, cfg.args]) assert.ok(typeof o === 'object' && o !== null && !Array.isArray(o));
  // The verbs' readers: each either answers or refuses with a CniError, on anything the parser let through.
  const opts = parsesOrCniError(() => readAttachOptions(cfg, { mac: '', ip: '', podUid: '' }));
  if (opts) {
    assert.ok(opts.mac === '' || /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(opts.mac), `mac ${opts.mac}`);
    for (const a of opts.requestedAddresses) assert.notEqual(isIP(a), 0, `requested address ${a}`);
  }
  const dns = parsesOrCniError(() => readDns(cfg));
  if (dns) for (const n of dns.nameservers ?? []) assert.notEqual(isIP(n), 0, `nameserver ${n}`);
  const valid = parsesOrCniError(() => readValidAttachments(cfg));
  if (valid) for (const a of valid) assert.ok(a.containerId !== '' && a.ifname !== '');
}

describe('network config on stdin (property)', () => {
  it('any bytes: a NetworkConfig or a CniError', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 200 }),
          fc.string({ unit: 'binary', maxLength: 200 }),
          fc.json().map((j) => j),
        ),
        (raw) => {
          const cfg = parsesOrCniError(() => parseNetworkConfig(raw));
          if (cfg) checkAccepted(cfg);
        },
      ),
      RUNS,
    );
  });

  it('Weft-shaped configs with wrong, missing or odd fields: accepted ones keep every promise, and so do the verbs reading them', () => {
    let accepted = 0;
    fc.assert(
      fc.property(configObject, (o) => {
        const cfg = parsesOrCniError(() => parseNetworkConfig(JSON.stringify(o)));
        if (!cfg) return;
        accepted++;
        checkAccepted(cfg);
      }),
      RUNS,
    );
    assert.ok(accepted > 0, `only ${accepted} configs accepted: the generator does not reach what parses`);
  });

  it('valid JSON with hostile values anywhere (deep nesting, __proto__, huge numbers) is never an unexpected error', () => {
    // As JSON text: values that JSON.parse builds but that are awkward to print or to walk.
    const nested = fc.integer({ min: 1, max: 20000 }).map((d) => '['.repeat(d) + ']'.repeat(d));
    const hostile = fc.oneof(
      nested,
      fc.constantFrom('{"toString":1,"valueOf":1}', '1e309', '-0', '{"__proto__":{"mac":"01:00:00:00:00:00"}}'),
      fc.json(),
    );
    fc.assert(
      fc.property(
        fc.constantFrom(
          'cniVersion',
          'name',
          'type',
          'agentSocket',
          'pool',
          'runtimeConfig',
          'args',
          'dns',
          '__proto__',
          'cni.dev/valid-attachments',
        ),
        hostile,
        (key, value) => {
          const text = `{"cniVersion":"1.1.0","name":"weft","type":"weft",${JSON.stringify(key)}:${value}}`;
          const cfg = parsesOrCniError(() => parseNetworkConfig(text));
          if (cfg) checkAccepted(cfg);
        },
      ),
      { numRuns: 100, interruptAfterTimeLimit: 2000, includeErrorInReport: true },
    );
  });
});

describe('CNI_* environment (property)', () => {
  const argKey = fc.oneof(
    fc.constantFrom('IgnoreUnknown', 'K8S_POD_NAMESPACE', 'K8S_POD_NAME', 'K8S_POD_UID', 'IP', 'MAC', 'FOO', ''),
    fc.string({ maxLength: 8 }),
  );
  const argValue = fc.oneof(
    fc.constantFrom('1', '0', 'true', 'false', 'TRUE', 'yes', ''),
    fc.string({ maxLength: 12 }),
    ip,
    mac,
  );
  const cniArgs = fc.oneof(
    fc
      .array(
        fc.tuple(argKey, argValue).map(([k, v]) => `${k}=${v}`),
        { maxLength: 5 },
      )
      .map((pairs) => pairs.join(';')),
    fc.string({ unit: 'binary', maxLength: 60 }),
  );

  it('CNI_ARGS: parsed or code 4; what parses is what was given, and readAttachOptions of it is a CniError or checked', () => {
    fc.assert(
      fc.property(cniArgs, (raw) => {
        const a = parsesOrCniError(() => parseCniArgs(raw));
        if (!a) return;
        for (const v of Object.values(a)) assert.equal(typeof v, 'string');
        for (const [key, v] of [
          ['K8S_POD_NAMESPACE', a.podNamespace],
          ['K8S_POD_NAME', a.podName],
          ['IP', a.ip],
          ['MAC', a.mac],
          ['K8S_POD_UID', a.podUid],
        ] as const) {
          if (v !== '')
            assert.ok(raw.split(';').includes(`${key}=${v}`), `${key}=${v} is not in ${JSON.stringify(raw)}`);
        }
        const cfg = parseNetworkConfig('{"cniVersion":"1.1.0","name":"weft","type":"weft"}');
        const opts = parsesOrCniError(() => readAttachOptions(cfg, a));
        if (opts) {
          assert.ok(opts.podUid === '' || /^[A-Za-z0-9-]{1,128}$/.test(opts.podUid), `pod UID ${opts.podUid}`);
          for (const addr of opts.requestedAddresses) assert.notEqual(isIP(addr), 0);
        }
      }),
      RUNS,
    );
  });

  it('readInvocation: any environment is an Invocation whose names are safe to use, or code 4', () => {
    const value = fc.oneof(
      fc.constant(undefined),
      fc.constantFrom('abc123', 'eth0', '/var/run/netns/x', '', '.', '..'),
      fc.string({ unit: 'binary', maxLength: 20 }),
    );
    const env = fc.record({
      CNI_CONTAINERID: value,
      CNI_NETNS: value,
      CNI_IFNAME: value,
      CNI_PATH: value,
      CNI_ARGS: fc.oneof(fc.constant(undefined), cniArgs),
    });
    fc.assert(
      fc.property(fc.constantFrom<Command>('ADD', 'DEL', 'CHECK', 'STATUS', 'GC'), env, (command, e) => {
        const inv = parsesOrCniError(() => readInvocation(command, e));
        if (!inv) return;
        if (command === 'ADD' || command === 'DEL' || command === 'CHECK') {
          assert.match(inv.containerId, /^[A-Za-z0-9][A-Za-z0-9_.-]*$/);
          assert.ok(
            inv.ifname !== '' &&
              inv.ifname !== '.' &&
              inv.ifname !== '..' &&
              Buffer.byteLength(inv.ifname) <= 15 &&
              !/[/:\s]/.test(inv.ifname),
            `ifname ${JSON.stringify(inv.ifname)}`,
          );
        }
        if (command === 'ADD' || command === 'CHECK') assert.ok(inv.netns.startsWith('/'));
      }),
      RUNS,
    );
  });
});
