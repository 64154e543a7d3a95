// Packs the CNI plugin into one executable file (dist/bin/weft-cni), the node agent into one module
// (dist/bin/weft-agent.mjs), and writes the `weft` launcher.
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { build } from 'esbuild';
import { CNI_BUNDLE_OPTIONS } from './cni-bundle-options.mjs';

/**
 * Packages the plugin must never contain: the runtime starts it once per pod operation, and loading these cost most
 * of its start-up (grpc-js alone about 80 ms; see cni/DESIGN.md, "Start-up"). The plugin speaks gRPC through
 * lib/grpc/unary-client.ts and logs through lib/json-logger.ts instead.
 */
const FORBIDDEN_IN_PLUGIN = [
  /(^|\/)node_modules\/@grpc\//,
  /(^|\/)node_modules\/@opentelemetry\//,
  /(^|\/)node_modules\/protobufjs\//,
];
const OUT = 'dist/bin/weft-cni';

mkdirSync('dist/bin', { recursive: true });
// The code runs in a vm.Script (see loaderFor), which has no loader for import(): every dynamic import, Node's own
// modules included (`node:net`, loaded by the first agent call), becomes a require (CNI_BUNDLE_OPTIONS).
const result = await build({ ...CNI_BUNDLE_OPTIONS, outfile: OUT, sourcemap: false });
const inputs = Object.keys(result.metafile.outputs[OUT].inputs);
const isForbidden = (f) => FORBIDDEN_IN_PLUGIN.some((re) => re.test(f));
const forbidden = inputs.filter(isForbidden);
if (forbidden.length > 0) {
  // Name the plugin's own imports that pulled them in, not the package's internal ones.
  const entries = forbidden.flatMap((f) =>
    importersOf(f)
      .filter((by) => !isForbidden(by))
      .map((by) => `  ${by} imports ${f}`),
  );
  console.error(
    `scripts/bundle.mjs: dist/bin/weft-cni must not contain @grpc/*, @opentelemetry/* or protobufjs, but bundles ${forbidden.length} of their files:\n${entries.join('\n')}`,
  );
  process.exit(1);
}

/**
 * The file is the bundle's code as a string plus V8's code cache for it, in one executable file (a runtime installs
 * and runs one file). The cache is made here by running one ADD against a stand-in agent and asking V8 for the code
 * of every function that ran, so the plugin deserializes compiled code instead of parsing and compiling the bundle
 * and then each function on its first call (about 8 ms of every ADD; see cni/DESIGN.md, "Start-up"). A Node whose
 * V8 (version or flags) differs from the build's rejects the cache and compiles the code as before: slower, not
 * wrong. The plugin reports which happened in its WEFT_CNI_TIMING line (`codeCache`: used or rejected).
 */
const code = `(function (exports, require, module, __filename, __dirname) {${result.outputFiles[0].text}\n})`;
const cache = await makeCodeCache(code);
writeFileSync(OUT, loaderFor(code, cache));
writeFileSync('dist/bin/weft-cni.meta.json', JSON.stringify(result.metafile));
chmodSync(OUT, 0o755);
// dist/bin is CommonJS: an extensionless executable is read as CommonJS wherever a runtime installs it
// (/opt/cni/bin has no package.json), so it must be CommonJS here too.
writeFileSync('dist/bin/package.json', JSON.stringify({ type: 'commonjs' }) + '\n');
writeFileSync('dist/bin/weft', "#!/usr/bin/env node\nimport('../cli/main.js');\n");
chmodSync('dist/bin/weft', 0o755);

/**
 * The node agent in one file too (dist/bin/weft-agent.mjs): a restarted agent's start-up is part of how fast it
 * reconciles (services/routes/DESIGN.md, Restart), and loading its few hundred unbundled modules (grpc-js,
 * OpenTelemetry, the generated protobuf code) cost about 100-180 ms more than one file. `netlink` stays outside: it
 * loads its native binary from its own folder. Packages written as CommonJS get a `require` from createRequire.
 * `node --enable-source-maps dist/bin/weft-agent.mjs` maps stack traces back to the sources.
 */
await build({
  entryPoints: ['node-dataplane/main.ts'],
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  outfile: 'dist/bin/weft-agent.mjs',
  external: ['netlink'],
  banner: {
    js: "import { createRequire as __weftCreateRequire } from 'node:module'; const require = __weftCreateRequire(import.meta.url);",
  },
  sourcemap: 'linked',
  logLevel: 'warning',
});

/**
 * The executable: compiles `code` with `cache` (V8 checks that it fits and ignores it otherwise), loads it as a
 * CommonJS module and calls its `main` with how it was packed (reported by WEFT_CNI_TIMING).
 */
function loaderFor(code, cache) {
  return `#!/usr/bin/env node
"use strict";
// weft-cni, Weft's CNI plugin, packed by scripts/bundle.mjs: the plugin's code as a string and V8's code cache for
// it, made at build time, so start-up deserializes compiled code instead of compiling it. A Node whose V8 differs
// from the build's rejects the cache and compiles the code: slower, not wrong. The source is cni/ in Weft.
const code = ${JSON.stringify(code)};
const cache = ${JSON.stringify(cache.toString('base64'))};
const script = new (require("vm").Script)(code, { filename: __filename, cachedData: Buffer.from(cache, "base64") });
script.runInThisContext()(exports, require, module, __filename, __dirname);
module.exports.main({ codeCache: script.cachedDataRejected ? "rejected" : "used", builtWith: ${JSON.stringify(process.version)} });
`;
}

/**
 * Runs `code` once as the runtime would run an ADD, against a stand-in agent on a temporary socket that answers
 * Attach, and returns V8's code cache for it taken as the plugin exits (so it holds the functions an ADD runs).
 */
async function makeCodeCache(code) {
  const { encodeFrame, readFrame, MAGIC } = await import(path.resolve('dist/lib/grpc/unary-frames.js'));
  const { AttachResponse } = await import(path.resolve('dist/gen/codec/weft/agent/v1/agent.js'));
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-cni-bundle-'));
  const socket = path.join(dir, 'agent.sock');
  const netns = path.join(dir, 'netns');
  writeFileSync(netns, '');
  const answer = AttachResponse.encode(
    AttachResponse.fromPartial({
      interfaces: [
        { name: 'weft0123456789a', mac: '02:00:00:00:00:01', sandbox: '' },
        { name: 'eth0', mac: '0a:58:0a:f4:00:02', sandbox: netns },
      ],
      ips: [{ address: '10.244.0.2/32', gateway: '169.254.1.1', interface: 1 }],
      routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }],
    }),
  ).finish();
  const server = net.createServer((s) => {
    let data = Buffer.alloc(0);
    s.on('data', (chunk) => {
      data = Buffer.concat([data, chunk]);
      if (data.length < MAGIC.length || readFrame(data.subarray(MAGIC.length), 1 << 20) === null) return;
      s.end(encodeFrame({ status: 0, message: '', metadata: {} }, answer));
    });
    s.on('error', () => {});
  });
  await new Promise((resolve) => server.listen(socket, resolve));
  try {
    writeFileSync(path.join(dir, 'code.js'), code);
    // Runs the code as the loader does, but takes the cache when the plugin calls process.exit.
    const harness = `const fs = require("fs"); const vm = require("vm");
      const script = new vm.Script(fs.readFileSync(process.argv[1], "utf8"), { filename: "weft-cni" });
      const exit = process.exit;
      process.exit = (status) => { fs.writeFileSync(process.argv[2], script.createCachedData()); exit.call(process, status); };
      script.runInThisContext()(exports, require, module, "weft-cni", ".");
      module.exports.main({ codeCache: "used", builtWith: process.version });`;
    // Not spawnSync: this process's event loop serves the stand-in agent meanwhile.
    const run = await runToEnd(process.execPath, ['-e', harness, path.join(dir, 'code.js'), path.join(dir, 'cache')], {
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        CNI_COMMAND: 'ADD',
        CNI_CONTAINERID: 'bundle',
        CNI_NETNS: netns,
        CNI_IFNAME: 'eth0',
      },
      input: JSON.stringify({ cniVersion: '1.0.0', name: 'weft', type: 'weft', agentSocket: socket }),
    });
    if (run.status !== 0 || !run.stdout.includes('"10.244.0.2/32"')) {
      throw new Error(
        `scripts/bundle.mjs: the plugin's warm-up ADD failed (exit ${run.status}): ${run.stdout} ${run.stderr}`,
      );
    }
    return readFileSync(path.join(dir, 'cache'));
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs a process to its end with `input` on stdin, without blocking the event loop. */
function runToEnd(file, args, { env, input }) {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(input);
  });
}

/** The bundled files that import `file` (from esbuild's metafile), to say how a forbidden package got in. */
function importersOf(file) {
  return Object.entries(result.metafile.inputs)
    .filter(([, info]) => info.imports.some((i) => i.path === file))
    .map(([name]) => name);
}
