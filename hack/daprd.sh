#!/usr/bin/env bash
# hack/daprd.sh — make sure a daprd (Dapr's sidecar) exists under ~/.cache/mqsidecar/bin and
# print its path. The publish benchmark measures Dapr's publish API beside mqsidecar's with it
# (`go run ./bench -scenario publish`, BENCH_DAPRD).
#
# daprd is built from its module on the Go module proxy (the only network a fresh machine has;
# no release tarball is downloaded), with one component compiled in: the Kafka pub/sub. Dapr's
# build selects components by tag (stablecomponents, allcomponents); the copy built here adds
# a tag of its own, kafkaonly, to those two files, so that the build takes minutes, not tens.
# Nothing of Dapr is kept in this repository; the build happens in a temporary directory.
#
# Usage: daprd=$(hack/daprd.sh)        # builds on first use (~3 min), then prints the path
# Env:   DAPR_VERSION (default v1.14.0, the one the module proxy serves here)
set -euo pipefail

DAPR_VERSION=${DAPR_VERSION:-v1.14.0}
bin="${MQSIDECAR_CACHE:-${HOME:-/root}/.cache/mqsidecar}/bin"
daprd="$bin/daprd-$DAPR_VERSION-kafka"

if [[ -x $daprd ]]; then
	echo "$daprd"
	exit 0
fi

echo "hack/daprd.sh: building daprd $DAPR_VERSION (Kafka pub/sub only) into $bin (a few minutes)" >&2
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
dir=$(cd "$work" && GOFLAGS= go mod download -json "github.com/dapr/dapr@$DAPR_VERSION" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [[ -z $dir || ! -d $dir ]]; then
	echo "hack/daprd.sh: the Go module proxy did not give github.com/dapr/dapr@$DAPR_VERSION" >&2
	exit 1
fi
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
comp="$work/src/cmd/daprd/components"
for f in "$comp/pubsub_kafka.go" "$comp/zz_notag.go"; do
	[[ -f $f ]] || { echo "hack/daprd.sh: $f is missing: Dapr's component layout changed" >&2; exit 1; }
done
sed -i '1s#^//go:build allcomponents || stablecomponents$#//go:build allcomponents || stablecomponents || kafkaonly#' "$comp/pubsub_kafka.go"
sed -i '1s#^//go:build !allcomponents && !stablecomponents$#//go:build !allcomponents \&\& !stablecomponents \&\& !kafkaonly#' "$comp/zz_notag.go"
grep -q kafkaonly "$comp/pubsub_kafka.go" && grep -q kafkaonly "$comp/zz_notag.go" ||
	{ echo "hack/daprd.sh: Dapr's build tags changed; cannot select the Kafka pub/sub alone" >&2; exit 1; }
mkdir -p "$bin"
(cd "$work/src" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -tags kafkaonly -o "$daprd.tmp" ./cmd/daprd) >&2
mv "$daprd.tmp" "$daprd"
echo "$daprd"
