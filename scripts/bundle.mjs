// Packs the CNI plugin into one executable file (dist/bin/weft-cni) and writes the `weft` launcher.
import { build } from 'esbuild';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';

/**
 * Packages the plugin must never contain: the runtime starts it once per pod operation, and loading these cost most
 * of its start-up (grpc-js alone about 80 ms; see cni/DESIGN.md, "Start-up"). The plugin speaks gRPC through
 * lib/grpc/unary-client.ts and logs through lib/json-logger.ts instead.
 */
const FORBIDDEN_IN_PLUGIN = [/(^|\/)node_modules\/@grpc\//, /(^|\/)node_modules\/@opentelemetry\//, /(^|\/)node_modules\/protobufjs\//];

mkdirSync('dist/bin', { recursive: true });
const result = await build({
  entryPoints: ['cni/main.ts'],
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  outfile: 'dist/bin/weft-cni',
  banner: { js: '#!/usr/bin/env node' },
  minify: true,
  sourcemap: false,
  metafile: true,
  logLevel: 'warning',
});
const inputs = Object.keys(result.metafile.outputs['dist/bin/weft-cni'].inputs);
const isForbidden = (f) => FORBIDDEN_IN_PLUGIN.some((re) => re.test(f));
const forbidden = inputs.filter(isForbidden);
if (forbidden.length > 0) {
  // Name the plugin's own imports that pulled them in, not the package's internal ones.
  const entries = forbidden.flatMap((f) => importersOf(f).filter((by) => !isForbidden(by)).map((by) => `  ${by} imports ${f}`));
  console.error(
    `scripts/bundle.mjs: dist/bin/weft-cni must not contain @grpc/*, @opentelemetry/* or protobufjs, but bundles ${forbidden.length} of their files:\n${entries.join('\n')}`,
  );
  process.exit(1);
}
writeFileSync('dist/bin/weft-cni.meta.json', JSON.stringify(result.metafile));
chmodSync('dist/bin/weft-cni', 0o755);
// dist/bin is CommonJS: an extensionless executable is read as CommonJS wherever a runtime installs it
// (/opt/cni/bin has no package.json), so it must be CommonJS here too.
writeFileSync('dist/bin/package.json', JSON.stringify({ type: 'commonjs' }) + '\n');
writeFileSync('dist/bin/weft', "#!/usr/bin/env node\nimport('../cli/main.js');\n");
chmodSync('dist/bin/weft', 0o755);

/** The bundled files that import `file` (from esbuild's metafile), to say how a forbidden package got in. */
function importersOf(file) {
  return Object.entries(result.metafile.inputs)
    .filter(([, info]) => info.imports.some((i) => i.path === file))
    .map(([name]) => name);
}
