#!/usr/bin/env bash
# Starts a real Kubernetes API server for trying deploy/ by hand: etcd and kube-apiserver 1.20.2 (built by
# scripts/kube/build.sh) on 127.0.0.1 only, on free ports, data in a temporary folder. It prints the kubeconfig to
# use (with the cache's kubectl 1.20.2) and runs until Ctrl-C, then kills both and removes the folder.
# Same code as the tests use: test/support/kube-apiserver.ts (needs `npm run build` first).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f dist/test/support/kube-apiserver.js ] || { echo "weft: run npm run build first" >&2; exit 1; }
exec node --input-type=module -e '
const { startKubeApiserver, kubeBinaries } = await import(process.cwd() + "/dist/test/support/kube-apiserver.js");
const kube = await startKubeApiserver();
console.log(`kube-apiserver ${kube.server} ready in ${kube.readyMs} ms`);
console.log(`export KUBECONFIG=${kube.kubeconfig}; alias kubectl=${kubeBinaries.kubectl}`);
const stop = () => kube.stop().then(() => process.exit(0));
process.once("SIGINT", stop);
process.once("SIGTERM", stop);
setInterval(() => {}, 1 << 30);
'
