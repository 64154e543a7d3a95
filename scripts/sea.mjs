// Builds dist/bin/weft-cni-static: Weft's CNI plugin as a Node single executable application (SEA), for hosts
// without Node. `npm run build:cni-static` (after `npm run build`); it takes a few seconds (postject rewrites a
// ~100 MB copy of Node), so it is not part of `npm run build`. See cni/DESIGN.md, "The self-contained executable".
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { isBuiltin } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { build } from 'esbuild';
import { inject } from 'postject';
import { CNI_BUNDLE_OPTIONS } from './cni-bundle-options.mjs';

const OUT = 'dist/bin/weft-cni-static';
/** The fuse Node checks for an injected blob (nodejs.org/api/single-executable-applications.html). */
const SENTINEL_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

const started = Date.now();
const dir = mkdtempSync(path.join(tmpdir(), 'weft-cni-sea-'));
const temp = `${OUT}.${process.pid}.tmp`;
try {
  // The same bundle as dist/bin/weft-cni (scripts/bundle.mjs): CommonJS, no dynamic import (an SEA's main script
  // has a require for Node's own modules only, and no import()), nothing from node_modules left outside.
  const result = await build({
    ...CNI_BUNDLE_OPTIONS,
    // The module runs nothing when loaded: this calls its main. The executable carries the Node it runs on, and the
    // code cache is the SEA's own (useCodeCache).
    footer: { js: 'module.exports.main({ codeCache: "sea", builtWith: process.version });' },
  });
  const outside = Object.values(result.metafile.outputs)[0].imports.filter((i) => i.external && !isBuiltin(i.path));
  if (outside.length > 0)
    throw new Error(`the plugin would load ${outside.map((i) => i.path).join(', ')} from outside the executable`);
  const main = path.join(dir, 'weft-cni.cjs');
  writeFileSync(main, result.outputFiles[0].text);
  const blob = path.join(dir, 'weft-cni.blob');
  const seaConfig = path.join(dir, 'sea-config.json');
  writeFileSync(
    seaConfig,
    JSON.stringify({ main, output: blob, disableExperimentalSEAWarning: true, useCodeCache: true }),
  );
  const made = spawnSync(process.execPath, ['--experimental-sea-config', seaConfig], { encoding: 'utf8' });
  if (made.status !== 0) throw new Error(`node --experimental-sea-config failed (exit ${made.status}): ${made.stderr}`);

  copyFileSync(process.execPath, temp);
  chmodSync(temp, 0o755);
  // postject prints progress, and warnings about the ELF notes it skips, through the console; keep the build's
  // output to what matters (a failure still throws).
  const quiet = { log: console.log, warn: console.warn, error: console.error };
  console.log = console.warn = console.error = () => {};
  try {
    await inject(temp, 'NODE_SEA_BLOB', readFileSync(blob), { sentinelFuse: SENTINEL_FUSE });
  } finally {
    Object.assign(console, quiet);
  }
  // Proof before it replaces the old one: VERSION answered with no environment at all (no PATH, so no node).
  const version = spawnSync(path.resolve(temp), [], {
    env: { CNI_COMMAND: 'VERSION' },
    input: '',
    encoding: 'utf8',
    cwd: '/',
  });
  if (version.status !== 0 || !version.stdout.includes('"supportedVersions"')) {
    throw new Error(
      `the built executable does not answer VERSION (exit ${version.status}): ${version.stdout} ${version.stderr}`,
    );
  }
  renameSync(temp, OUT);
  console.log(
    `scripts/sea.mjs: ${OUT} (${(statSync(OUT).size / 1e6).toFixed(1)} MB, Node ${process.version}) in ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
} catch (err) {
  rmSync(temp, { force: true });
  console.error(`scripts/sea.mjs: cannot build ${OUT}: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
