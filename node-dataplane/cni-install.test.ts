import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { run } from '../lib/exec.js';
import { silentLogger } from '../lib/logger.js';
import { watchReads } from '../test/support/torn-reads.js';
import { installCni, type CniInstallOptions } from './cni-install.js';
import { renderConflist } from './domain/cni-conflist.js';

const plugin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bin/weft-cni');

describe('the agent installs the CNI plugin and its conflist', () => {
  let dir = '';
  let opts: CniInstallOptions;
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'weft-cni-install-'));
    mkdirSync(path.join(dir, 'bin'));
    mkdirSync(path.join(dir, 'net.d'));
    opts = {
      binDir: path.join(dir, 'bin'),
      confDir: path.join(dir, 'net.d'),
      pluginSource: plugin,
      name: 'weft',
      agentSocket: '/run/weft/agent.sock',
      bandwidth: false,
    };
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('writes <bin>/weft (0755, the bundle) and <conf>/10-weft.conflist (0644: weft, then portmap), and nothing else', async () => {
    const res = await installCni(opts, silentLogger);
    assert.deepEqual(res, {
      plugin: { path: path.join(dir, 'bin', 'weft'), outcome: 'written' },
      conflist: { path: path.join(dir, 'net.d', '10-weft.conflist'), outcome: 'written' },
    });
    assert.equal(statSync(res.plugin!.path).mode & 0o7777, 0o755);
    assert.ok(readFileSync(res.plugin!.path).equals(readFileSync(plugin)));
    assert.equal(statSync(res.conflist!.path).mode & 0o7777, 0o644);
    assert.deepEqual(JSON.parse(readFileSync(res.conflist!.path, 'utf8')), {
      cniVersion: '1.0.0',
      name: 'weft',
      plugins: [
        { type: 'weft', agentSocket: '/run/weft/agent.sock' },
        { type: 'portmap', capabilities: { portMappings: true }, snat: true },
      ],
    });
    assert.deepEqual([readdirSync(opts.binDir), readdirSync(opts.confDir)], [['weft'], ['10-weft.conflist']]);
    // The installed file is the plugin a runtime runs: it answers VERSION.
    const stdout = await run(res.plugin!.path, [], {
      env: { CNI_COMMAND: 'VERSION', PATH: process.env.PATH },
      input: '{"cniVersion":"1.0.0"}',
      timeoutMs: 20_000,
    });
    assert.equal((JSON.parse(stdout) as { cniVersion: string }).cniVersion, '1.0.0');
  });

  it('a restart with the same settings rewrites nothing; a changed setting rewrites only the conflist', async () => {
    const files = [path.join(dir, 'bin', 'weft'), path.join(dir, 'net.d', '10-weft.conflist')];
    const before = files.map((f) => statSync(f));
    const again = await installCni(opts, silentLogger);
    assert.deepEqual([again.plugin!.outcome, again.conflist!.outcome], ['unchanged', 'unchanged']);
    assert.deepEqual(
      files.map((f) => [statSync(f).ino, statSync(f).mtimeMs]),
      before.map((s) => [s.ino, s.mtimeMs]),
    );

    const withBandwidth = await installCni({ ...opts, bandwidth: true }, silentLogger);
    assert.deepEqual([withBandwidth.plugin!.outcome, withBandwidth.conflist!.outcome], ['unchanged', 'written']);
    const list = JSON.parse(readFileSync(files[1]!, 'utf8')) as { plugins: { type: string; capabilities?: object }[] };
    assert.deepEqual(list.plugins.at(-1), { type: 'bandwidth', capabilities: { bandwidth: true } });
    await installCni(opts, silentLogger);
  });

  it('empty folders switch installing off; a missing folder or plugin is a clear error', async () => {
    assert.deepEqual(await installCni({ ...opts, binDir: '', confDir: '' }, silentLogger), {});
    await assert.rejects(
      installCni({ ...opts, binDir: '', confDir: path.join(dir, 'absent') }, silentLogger),
      new RegExp(`the folder ${path.join(dir, 'absent')} does not exist; create it or fix WEFT_CNI_CONF_DIR`),
    );
    await assert.rejects(
      installCni({ ...opts, pluginSource: path.join(dir, 'no-plugin') }, silentLogger),
      /cannot read the CNI plugin .*no-plugin.*ENOENT/,
    );
  });

  it('a runtime polling the conflist and the plugin while the agent rewrites them never sees a partial file', async () => {
    const conflist = path.join(dir, 'net.d', '10-weft.conflist');
    const variants = [false, true].map((bandwidth) => renderConflist({ ...opts, bandwidth }));
    const confReads = await watchReads(conflist, variants);
    const pluginReads = await watchReads(path.join(dir, 'bin', 'weft'), [readFileSync(plugin)]);
    try {
      for (let i = 0; i < 60; i++) {
        const res = await installCni({ ...opts, bandwidth: i % 2 === 0 }, silentLogger);
        assert.equal(res.conflist!.outcome, 'written');
      }
    } finally {
      for (const [what, reads] of [
        ['conflist', confReads],
        ['plugin', pluginReads],
      ] as const) {
        const report = await reads.stop();
        assert.ok(report.reads > 20, `the ${what} was read while it was rewritten (${report.reads} reads)`);
        assert.equal(report.torn, 0, `torn reads of the ${what}: ${report.torn} (first: ${report.firstTorn})`);
      }
    }
  });
});
