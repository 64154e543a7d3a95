// The esbuild options of the CNI plugin's bundle, shared by scripts/bundle.mjs (dist/bin/weft-cni) and scripts/sea.mjs
// (dist/bin/weft-cni-static): one CommonJS file of cni/main.ts, minified, with every dynamic import turned into a
// require. Both run the code where import() has no loader (bundle.mjs: a vm.Script; sea.mjs: an SEA's main script).
export const CNI_BUNDLE_OPTIONS = Object.freeze({
  entryPoints: ['cni/main.ts'],
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  supported: { 'dynamic-import': false },
  minify: true,
  write: false,
  metafile: true,
  logLevel: 'warning',
});
