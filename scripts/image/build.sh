#!/usr/bin/env bash
# Builds Weft's image (Containerfile at the repo root) with no registry: the base is made here with debootstrap from
# the Debian mirror, and Node is the one that built dist/ (so the plugin's V8 code cache and weft-cni-static match
# it). Needs root, podman and debootstrap (Debian packages), and `npm run build` first; it makes
# dist/bin/weft-cni-static when missing. Usage: scripts/image/build.sh [IMAGE] (default localhost/weft:dev).
#
# 1. Base image localhost/weft-base:bookworm (made once, remade when the Node or the package list changes):
#    debootstrap --variant=minbase bookworm with what the agent runs (iproute2, iptables, ipset, procps), plus Node.
# 2. Context in a temporary folder: dist/ without tests and benchmarks, migrations/, package.json, and node_modules
#    pruned to production dependencies (`npm prune --omit=dev --offline`: nothing is downloaded).
# 3. `podman build` (the Containerfile has no RUN step), then a smoke run: the CLI answers, the agent's tools are
#    there, the static plugin answers VERSION.
# Load the result into a node's runtime without a registry: `podman save IMAGE | ctr -n k8s.io images import -`
# (containerd) or `podman save IMAGE | ssh NODE podman load` (CRI-O shares podman's storage).
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${1:-localhost/weft:dev}
BASE=localhost/weft-base:bookworm
SUITE=bookworm
PACKAGES=iproute2,iptables,ipset,procps,ca-certificates
NODE=${WEFT_IMAGE_NODE:-$(command -v node)}
mirror=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
MIRROR=${WEFT_DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}

die() { echo "weft: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (debootstrap and podman's root storage)"
command -v podman >/dev/null || die "podman is missing: apt-get install podman"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
node_version=$("$NODE" --version)
[ "$("$NODE" -p 'process.versions.node.split(".")[0]')" -ge 20 ] || die "$NODE is $node_version; Weft needs Node 20 or later"
[ -x dist/bin/weft ] && [ -f dist/bin/weft-agent.mjs ] || die "dist/ is not built: run npm run build"
[ -x dist/bin/weft-cni-static ] || node scripts/sea.mjs
start=$(date +%s)

# 1. The base, reused while its labels match.
want="$SUITE $PACKAGES node-$node_version"
have=$(podman image inspect --format '{{ index .Labels "weft.base" }}' "$BASE" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  root=$(mktemp -d /var/tmp/weft-base.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "weft: debootstrap $SUITE (minbase + $PACKAGES) from $MIRROR" >&2
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >/var/tmp/weft-debootstrap.log 2>&1 \
    || { tail -20 /var/tmp/weft-debootstrap.log >&2; die "debootstrap failed (log: /var/tmp/weft-debootstrap.log)"; }
  install -m 0755 "$NODE" "$root/usr/local/bin/node"
  chroot "$root" /usr/local/bin/node --version >/dev/null || die "Node does not run in the base (a library missing?)"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/*
  tar -C "$root" --numeric-owner -c . | podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL weft.base=\"$want\"" - "$BASE" >/dev/null
  rm -rf "$root"
  trap - EXIT
  echo "weft: base $BASE made ($want)" >&2
else
  echo "weft: base $BASE reused ($want)" >&2
fi

# 2. The context.
ctx=$(mktemp -d /var/tmp/weft-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/dist"
(cd dist && tar --exclude=./test --exclude=./bench -c .) | tar -C "$ctx/dist" -x
cp -a migrations package.json package-lock.json "$ctx/"
cp -a "$(readlink -f node_modules)" "$ctx/node_modules"
(cd "$ctx" && npm prune --omit=dev --offline --ignore-scripts --no-audit --no-fund >/dev/null)
rm -f "$ctx/package-lock.json"

# 3. Build and smoke-run. The runs need no network, and ask for ulimits within what a machine inside a container may
#    grant (podman's default nofile, 1048576, is refused where the hard limit is lower: "error setting rlimit").
podman build --quiet --build-arg BASE="$BASE" -f Containerfile -t "$IMAGE" "$ctx" >/dev/null
run=(podman run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
"${run[@]}" "$IMAGE" node /opt/weft/dist/bin/weft --help >/dev/null || die "the image's weft --help failed"
"${run[@]}" "$IMAGE" sh -c 'for t in ip iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore ipset nsenter sysctl; do
  command -v "$t" >/dev/null || { echo "weft: $t is missing from the image" >&2; exit 1; }; done' || die "the agent's tools are missing from the image"
"${run[@]}" -e CNI_COMMAND=VERSION "$IMAGE" /opt/weft/dist/bin/weft-cni-static </dev/null | grep -q cniVersion \
  || die "weft-cni-static does not answer VERSION in the image"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "weft: $IMAGE built in $(( $(date +%s) - start )) s, $(( size / 1048576 )) MB" >&2
