#!/usr/bin/env bash
# Builds kube-apiserver 1.20.2 once, into a cache outside the clone, for the tests that need a real Kubernetes API
# server (test/kube-manifests.test.ts, started by scripts/kube/start.sh or test/support/kube-apiserver.ts).
#
# No registry offers a ready kube-apiserver, so it is built from Debian's `kubernetes` source package (1.20.2), which
# holds the whole upstream tree with vendor/, with Debian's golang-1.19, offline, in GOPATH mode. The source is fetched
# with a PRIVATE apt configuration (its own sources list, state and cache under the cache folder), so this step
# installs nothing system-wide. The tools it needs (golang-1.19, dpkg-dev) come from scripts/install-deps.sh.
#
# One change to the tree: vendor/github.com/modern-go/reflect2 1.0.1 is replaced by 1.0.2 (Debian's
# golang-github-modern-go-reflect2-dev), whose map iteration works under Go 1.18 and later; with 1.0.1 built by Go
# 1.19 the server dies (SIGSEGV in json-iterator) on the first request that carries a custom resource.
#
# Cache: ${WEFT_KUBE_CACHE:-/var/cache/weft/kube-1.20.2-b2} (b2: the reflect2 fix; b1 was kube-1.20.2); the result is $CACHE/bin/kube-apiserver and the matching
# $CACHE/bin/kubectl (from Debian's kubernetes-client .deb, same private apt configuration). When that binary
# is already there and reports v1.20.2, the script does nothing. About 5 minutes of CPU (3 minutes on two cores);
# the source tree and Go's build cache are removed afterwards: the cache keeps the two binaries (150 MB) and logs.
# Logs of the long steps go to $CACHE/log/.
set -euo pipefail
VERSION=1.20.2
BUILD=b2
CACHE=${WEFT_KUBE_CACHE:-/var/cache/weft/kube-$VERSION-$BUILD}
BIN=$CACHE/bin/kube-apiserver
GO=${WEFT_GO:-/usr/lib/go-1.19/bin/go}

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -qx "Kubernetes v$VERSION" && [ -x "$CACHE/bin/kubectl" ]; then
  echo "weft: kube-apiserver v$VERSION already built in $BIN" >&2
  exit 0
fi
[ -x "$GO" ] || { echo "weft: $GO is missing: run scripts/install-deps.sh as root (golang-1.19)" >&2; exit 1; }
command -v dpkg-source >/dev/null || { echo "weft: dpkg-source is missing: run scripts/install-deps.sh (dpkg-dev)" >&2; exit 1; }

start=$(date +%s)
mkdir -p "$CACHE"/{bin,log}
WORK=$CACHE/work            # scratch: apt state, the source package, GOPATH; removed at the end
rm -rf "$WORK"
mkdir -p "$WORK"/apt/{state/lists/partial,cache/archives/partial} "$WORK/src"
trap 'rm -rf "$WORK"' EXIT

# 1. Private apt configuration: one deb-src line for bookworm on the machine's own mirror (taken from the system's
#    sources, deb.debian.org otherwise), its own lists and cache; nothing of the system's apt state is touched.
mirror=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}
{ echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main"; } >"$WORK/apt/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$WORK/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State=$WORK/apt/state" -o "Dir::Cache=$WORK/apt/cache" -o "Debug::NoLocking=1")
echo "weft: fetching Debian's kubernetes $VERSION source package from $mirror" >&2
apt-get "${apt_opts[@]}" -qq update
# Debian names it 1.20.5+really1.20.2-…: the tree is upstream v1.20.2 (checked below by the built binary's version).
(cd "$WORK/src" && apt-get "${apt_opts[@]}" -qq source --download-only kubernetes \
  && apt-get "${apt_opts[@]}" -qq download kubernetes-client golang-github-modern-go-reflect2-dev) >"$CACHE/log/fetch.log" 2>&1 \
  || { cat "$CACHE/log/fetch.log" >&2; exit 1; }
dsc=$(ls "$WORK"/src/kubernetes_*.dsc | head -1)
# kubectl of the same version, from Debian's kubernetes-client, extracted into the cache rather than installed: it
# would collide with a kubectl the machine may already have (e.g. google-cloud-sdk's, which owns /usr/bin/kubectl).
dpkg-deb -x "$(ls "$WORK"/src/kubernetes-client_*.deb | head -1)" "$WORK/client"
install -m 0755 "$WORK/client/usr/bin/kubectl" "$CACHE/bin/kubectl"
dpkg-source -x "$dsc" "$WORK/src/kubernetes" >"$CACHE/log/unpack.log" 2>&1 || { cat "$CACHE/log/unpack.log" >&2; exit 1; }
# reflect2 1.0.2 over the vendored 1.0.1 (same API; see the top of this file).
dpkg-deb -x "$(ls "$WORK"/src/golang-github-modern-go-reflect2-dev_*.deb | head -1)" "$WORK/reflect2"
rm -rf "$WORK/src/kubernetes/vendor/github.com/modern-go/reflect2"
cp -r "$WORK/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2" "$WORK/src/kubernetes/vendor/github.com/modern-go/reflect2"
rm -f "$WORK/src/kubernetes/vendor/github.com/modern-go/reflect2"/*_test.go

# 2. GOPATH laid out as upstream's _output/local/go: src/k8s.io/kubernetes is the tree. Offline, no modules.
export GOPATH=$WORK/gopath GOCACHE=$WORK/gocache GO111MODULE=off GOFLAGS= GOPROXY=off CGO_ENABLED=0
mkdir -p "$GOPATH/src/k8s.io" "$GOPATH/bin"
ln -s "$WORK/src/kubernetes" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

# 3. pkg/generated/openapi, as upstream's build/root/Makefile.generated_files does: the vendored openapi-gen over
#    every package tagged `+k8s:openapi-gen=` (about 80) except code-generator's and sample-apiserver's examples,
#    plus apimachinery's meta/v1, runtime and version. (apiextensions' and kube-aggregator's generated openapi ship
#    in the tree already.)
echo "weft: generating pkg/generated/openapi" >&2
"$GO" build -o "$GOPATH/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
dirs=$(grep -rl --include='*.go' '+k8s:openapi-gen=' cmd pkg plugin staging/src vendor/k8s.io 2>/dev/null \
  | grep -v -e '/testdata/' -e '_test\.go$' -e 'k8s.io/code-generator/' -e 'k8s.io/sample-apiserver/' \
  | xargs -n1 dirname | sort -u \
  | sed -e 's#^staging/src/#k8s.io/kubernetes/vendor/#' -e 's#^vendor/#k8s.io/kubernetes/vendor/#' \
        -e 's#^\(cmd\|pkg\|plugin\)/#k8s.io/kubernetes/\1/#' | sort -u)
inputs=$(printf '%s\n' $dirs k8s.io/kubernetes/vendor/k8s.io/apimachinery/pkg/apis/meta/v1 \
  k8s.io/kubernetes/vendor/k8s.io/apimachinery/pkg/runtime k8s.io/kubernetes/vendor/k8s.io/apimachinery/pkg/version \
  | sort -u | paste -sd, -)
echo "weft: openapi-gen over $(echo "$inputs" | tr , '\n' | wc -l) packages" >&2
"$GOPATH/bin/openapi-gen" --logtostderr -v 1 -i "$inputs" -p k8s.io/kubernetes/pkg/generated/openapi \
  -O zz_generated.openapi -h hack/boilerplate/boilerplate.generatego.txt -r "$CACHE/log/openapi-violations.txt" \
  >"$CACHE/log/openapi-gen.log" 2>&1 || { tail -40 "$CACHE/log/openapi-gen.log" >&2; exit 1; }

# 4. kube-apiserver itself, with the version stamped as upstream's hack/lib/version.sh does (kubectl reads it).
echo "weft: building kube-apiserver (about 5 minutes of CPU)" >&2
# Both version packages, as upstream does: --version reads component-base's, the /version endpoint client-go's.
ldflags="-s -w"
for v in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $v.gitVersion=v$VERSION -X $v.gitMajor=1 -X $v.gitMinor=20 -X $v.gitTreeState=clean"
  ldflags="$ldflags -X $v.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
done
"$GO" build -o "$BIN.tmp" -ldflags "$ldflags" k8s.io/kubernetes/cmd/kube-apiserver >"$CACHE/log/build.log" 2>&1 \
  || { tail -40 "$CACHE/log/build.log" >&2; exit 1; }
mv "$BIN.tmp" "$BIN"
"$BIN" --version
echo "weft: kube-apiserver v$VERSION built in $(( $(date +%s) - start )) s into $BIN" >&2
