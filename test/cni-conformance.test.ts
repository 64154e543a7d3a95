/**
 * Runs the bundled plugin (dist/bin/weft-cni) the way a container runtime does: CNI_* variables in the
 * environment, the network config on stdin, the result or error read from stdout and the exit status. Needs no
 * root: the agent is a fake gRPC server on a unix socket in a temporary directory.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Server, ServerCredentials, status, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import {
  AgentServiceService,
  type AttachRequest,
  type AttachResponse,
  type DetachRequest,
  type DetachResponse,
} from '../gen/weft/agent/v1/agent.js';

const plugin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bin/weft-cni');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function runPlugin(env: Record<string, string>, stdin: string | Buffer): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(plugin, [], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdin.on('error', () => {}); // the plugin may stop reading an oversize config
    child.on('error', reject);
    child.on('close', (code) => resolve({ status: code, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

/** stdout must hold exactly one JSON document (and nothing else: logs belong on stderr). */
function onlyDocument(run: Run): Record<string, unknown> {
  const text = run.stdout.trim();
  assert.notEqual(text, '', `stdout is empty; stderr: ${run.stderr}`);
  assert.equal(text.split('\n').length, 1, `stdout has more than one line:\n${run.stdout}`);
  let doc: unknown;
  assert.doesNotThrow(() => (doc = JSON.parse(text)), `stdout is not one JSON document:\n${run.stdout}`);
  assert.ok(typeof doc === 'object' && doc !== null && !Array.isArray(doc), 'stdout is not a JSON object');
  return doc as Record<string, unknown>;
}

function assertCniError(run: Run, code: number, cniVersion = '1.0.0'): Record<string, unknown> {
  assert.equal(run.status, 1, `exit status; stdout: ${run.stdout} stderr: ${run.stderr}`);
  const doc = onlyDocument(run);
  assert.equal(doc.code, code, `code; msg: ${String(doc.msg)}`);
  assert.equal(doc.cniVersion, cniVersion);
  assert.ok(typeof doc.msg === 'string' && doc.msg.length > 0, 'msg is empty');
  return doc;
}

const config = (extra: Record<string, unknown> = {}) => JSON.stringify({ cniVersion: '1.0.0', name: 'weft', type: 'weft', ...extra });
const addEnv = {
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: '6f1c2d3e4b5a',
  CNI_NETNS: '/var/run/netns/cni-weft-test',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin',
  CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=6f1c2d3e4b5a',
};
const delEnv = { ...addEnv, CNI_COMMAND: 'DEL' };

describe('weft-cni, run as a runtime runs it', () => {
  let dir = '';

  before(async () => {
    assert.ok(existsSync(plugin), `${plugin} is missing; build it with: node scripts/bundle.mjs`);
    dir = await mkdtemp(path.join(tmpdir(), 'weft-cni-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('VERSION prints the supported versions', async () => {
    const run = await runPlugin({ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}');
    assert.equal(run.status, 0, run.stderr);
    assert.deepEqual(onlyDocument(run), { cniVersion: '1.0.0', supportedVersions: ['1.0.0'] });
  });

  it('malformed JSON is code 6', async () => {
    const doc = assertCniError(await runPlugin(addEnv, '{"cniVersion": "1.0.0", "name": '), 6);
    assert.match(String(doc.msg), /not valid JSON/);
  });

  it('a config without cniVersion is code 7', async () => {
    const doc = assertCniError(await runPlugin(addEnv, JSON.stringify({ name: 'weft', type: 'weft' })), 7);
    assert.match(String(doc.msg), /cniVersion/);
  });

  it('an unknown cniVersion is code 1 and names the supported versions', async () => {
    const doc = assertCniError(await runPlugin(addEnv, config({ cniVersion: '9.9.9' })), 1, '9.9.9');
    assert.match(String(doc.msg), /9\.9\.9.*1\.0\.0/);
  });

  it('a config over 1 MiB is code 7, unparsed', async () => {
    const doc = assertCniError(await runPlugin(addEnv, Buffer.alloc(1024 * 1024 + 1, '[')), 7);
    assert.match(String(doc.msg), /larger than/);
  });

  it('an unknown CNI_COMMAND is code 4', async () => {
    const doc = assertCniError(await runPlugin({ ...addEnv, CNI_COMMAND: 'FROB' }, config()), 4);
    assert.match(String(doc.msg), /FROB.*expected ADD, DEL or VERSION/);
  });

  it('ADD without CNI_CONTAINERID is code 4', async () => {
    const { CNI_CONTAINERID: _, ...env } = addEnv;
    const doc = assertCniError(await runPlugin(env, config()), 4);
    assert.match(String(doc.msg), /CNI_CONTAINERID/);
  });

  it('ADD with no agent socket is code 11 and names the socket', async () => {
    const socket = path.join(dir, 'absent', 'agent.sock');
    const doc = assertCniError(await runPlugin(addEnv, config({ agentSocket: socket })), 11);
    assert.ok(String(doc.msg).includes(socket), String(doc.msg));
    assert.match(String(doc.msg), /try again later/);
  });

  it('ADD with a socket nobody listens on is code 11', async () => {
    const socket = path.join(dir, 'stale.sock');
    await writeFile(socket, '');
    const doc = assertCniError(await runPlugin(addEnv, config({ agentSocket: socket })), 11);
    assert.ok(String(doc.msg).includes(socket), String(doc.msg));
  });

  describe('with an agent', () => {
    let server: Server;
    let socket = '';
    const attaches: AttachRequest[] = [];
    const detaches: DetachRequest[] = [];
    let attachError: { code: status; details: string } | undefined;
    let detachError: { code: status; details: string } | undefined;
    const answer: AttachResponse = {
      interfaces: [
        { name: 'weft6f1c2d3e', mac: 'ee:ee:ee:ee:ee:ee', sandbox: '' },
        { name: 'eth0', mac: '0a:58:0a:f4:01:07', sandbox: addEnv.CNI_NETNS },
      ],
      ips: [{ address: '10.244.1.7/32', gateway: '169.254.1.1', interface: 1 }],
      routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }],
    };

    before(async () => {
      socket = path.join(dir, 'agent.sock');
      server = new Server();
      server.addService(AgentServiceService, {
        attach: (call: ServerUnaryCall<AttachRequest, AttachResponse>, done: sendUnaryData<AttachResponse>) => {
          attaches.push(call.request);
          if (attachError) done(attachError, null);
          else done(null, answer);
        },
        detach: (call: ServerUnaryCall<DetachRequest, DetachResponse>, done: sendUnaryData<DetachResponse>) => {
          detaches.push(call.request);
          if (detachError) done(detachError, null);
          else done(null, {});
        },
      });
      await new Promise<void>((resolve, reject) =>
        server.bindAsync(`unix://${socket}`, ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
      );
    });
    after(() => {
      server.forceShutdown();
    });

    it('ADD prints the CNI 1.0.0 result and passes the pod to the agent', async () => {
      attachError = undefined;
      const run = await runPlugin(addEnv, config({ agentSocket: socket, pool: 'blue' }));
      assert.equal(run.status, 0, `stdout: ${run.stdout} stderr: ${run.stderr}`);
      assert.deepEqual(onlyDocument(run), {
        cniVersion: '1.0.0',
        interfaces: [
          { name: 'weft6f1c2d3e', mac: 'ee:ee:ee:ee:ee:ee' },
          { name: 'eth0', mac: '0a:58:0a:f4:01:07', sandbox: addEnv.CNI_NETNS },
        ],
        ips: [{ address: '10.244.1.7/32', gateway: '169.254.1.1', interface: 1 }],
        routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }],
        dns: {},
      });
      assert.deepEqual(attaches.at(-1), {
        containerId: addEnv.CNI_CONTAINERID,
        netns: addEnv.CNI_NETNS,
        ifname: 'eth0',
        podNamespace: 'default',
        podName: 'web-0',
        pool: 'blue',
      });
    });

    it('ADD when the pool is exhausted is code 100 with the agent message', async () => {
      attachError = { code: status.RESOURCE_EXHAUSTED, details: 'pool "default" has no free address' };
      const doc = assertCniError(await runPlugin(addEnv, config({ agentSocket: socket })), 100);
      assert.equal(doc.msg, 'pool "default" has no free address');
    });

    it('ADD the agent rejects as invalid is code 7', async () => {
      attachError = { code: status.INVALID_ARGUMENT, details: 'unknown pool "green"' };
      const doc = assertCniError(await runPlugin(addEnv, config({ agentSocket: socket, pool: 'green' })), 7);
      assert.equal(doc.msg, 'unknown pool "green"');
    });

    it('ADD failing inside the agent is code 999 with the agent message', async () => {
      attachError = { code: status.INTERNAL, details: 'internal error; see the server log' };
      const doc = assertCniError(await runPlugin(addEnv, config({ agentSocket: socket })), 999);
      assert.equal(doc.msg, 'internal error; see the server log');
    });

    it('DEL prints nothing and exits 0, with or without a netns', async () => {
      detachError = undefined;
      for (const netns of [addEnv.CNI_NETNS, '']) {
        const run = await runPlugin({ ...delEnv, CNI_NETNS: netns }, config({ agentSocket: socket }));
        assert.equal(run.status, 0, `stdout: ${run.stdout} stderr: ${run.stderr}`);
        assert.equal(run.stdout, '');
        assert.deepEqual(detaches.at(-1), { containerId: addEnv.CNI_CONTAINERID, netns, ifname: 'eth0' });
      }
    });

    it('DEL of something the agent no longer knows succeeds', async () => {
      detachError = { code: status.NOT_FOUND, details: 'no such attachment' };
      const run = await runPlugin(delEnv, config({ agentSocket: socket }));
      assert.equal(run.status, 0, `stdout: ${run.stdout} stderr: ${run.stderr}`);
      assert.equal(run.stdout, '');
    });

    it('DEL when the agent fails is an error, so the runtime retries', async () => {
      detachError = { code: status.UNAVAILABLE, details: 'shutting down' };
      assertCniError(await runPlugin(delEnv, config({ agentSocket: socket })), 11);
    });
  });
});
