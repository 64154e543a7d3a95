// Packs the CNI plugin into one executable file (dist/bin/weft-cni) and writes the `weft` launcher.
import { build } from 'esbuild';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';

mkdirSync('dist/bin', { recursive: true });
await build({
  entryPoints: ['cni/main.ts'],
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  outfile: 'dist/bin/weft-cni',
  banner: { js: '#!/usr/bin/env node' },
  minify: true,
  sourcemap: false,
  logLevel: 'warning',
});
chmodSync('dist/bin/weft-cni', 0o755);
// dist/bin is CommonJS: an extensionless executable is read as CommonJS wherever a runtime installs it
// (/opt/cni/bin has no package.json), so it must be CommonJS here too.
writeFileSync('dist/bin/package.json', JSON.stringify({ type: 'commonjs' }) + '\n');
writeFileSync('dist/bin/weft', "#!/usr/bin/env node\nimport('../cli/main.js');\n");
chmodSync('dist/bin/weft', 0o755);
