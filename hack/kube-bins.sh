#!/usr/bin/env bash
# hack/kube-bins.sh — make sure kube-apiserver and etcd binaries exist in the cache and print
# the directory that holds them (for hack/test-k8s.sh's API-server tests).
#
# Both are built from source through the Go module proxy (the only network CI has):
#
#   - kube-apiserver: k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces the
#     k8s.io/* staging modules with ./staging/... paths), so a throwaway module requires
#     k8s.io/kubernetes $KUBE_VERSION and replaces every staging module it needs with the
#     published v0.Y.Z of the same release, then builds k8s.io/kubernetes/cmd/kube-apiserver.
#   - etcd: go.etcd.io/etcd/server/v3 has relative replace directives too; the same trick
#     with its sibling modules at $ETCD_VERSION. (Debian's etcd-server is 3.4, older than
#     what this Kubernetes release supports.)
#
# The binaries are kept in ${MQSIDECAR_CACHE:-~/.cache/mqsidecar}/kube/<versions>/ and
# reused. The module cache is the usual one; the build cache is a temporary one, removed
# afterwards (about 3 GB of compiled Kubernetes packages that nothing else reuses), unless
# KUBE_GOCACHE names one to keep.
#
# Measured cold (empty module, build and binary caches) on the 2-core development machine,
# shared with other jobs at a load average of ~23: 27.5 min wall, 10.7 min CPU (user+sys);
# the module downloads are ~700 MB.
#
# Usage: dir=$(hack/kube-bins.sh)      # then $dir/kube-apiserver and $dir/etcd
# Env:   KUBE_VERSION (default v1.37.2, matching go.mod's k8s.io/api v0.37.2), ETCD_VERSION
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
cache=${MQSIDECAR_CACHE:-$HOME/.cache/mqsidecar}
dir="$cache/kube/kube-apiserver-$KUBE_VERSION-etcd-$ETCD_VERSION"

if [[ -x $dir/kube-apiserver && -x $dir/etcd ]]; then
	echo "$dir"
	exit 0
fi
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# GOFLAGS is cleared so a caller's -mod=vendor or similar cannot break the out-of-module
# builds; GOWORK=off so a go.work above the temp directory cannot either.
export GOFLAGS= GOWORK=off CGO_ENABLED=0
if [[ -n ${KUBE_GOCACHE:-} ]]; then
	export GOCACHE=$KUBE_GOCACHE
else
	export GOCACHE="$work/gocache"
fi

if [[ ! -x $dir/kube-apiserver ]]; then
	echo "hack/kube-bins.sh: building kube-apiserver $KUBE_VERSION (Go module proxy; several minutes the first time)" >&2
	start=$SECONDS
	staging_version="v0.${KUBE_VERSION#v1.}"
	mkdir "$work/kube"
	(
		cd "$work/kube"
		go mod init mqsidecar.local/kube-apiserver >/dev/null 2>&1
		go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" >"$work/kube.json"
		gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' "$work/kube.json")
		# Every module k8s.io/kubernetes replaces with a ./staging path, at the release's v0.Y.Z.
		# (Those not published on the proxy, e.g. sample controllers, are not needed to build.)
		for m in $(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$gomod"); do
			if GOFLAGS= go list -m "$m@$staging_version" >/dev/null 2>&1; then
				go mod edit -replace "$m=$m@$staging_version"
			fi
		done
		go mod edit -require "k8s.io/kubernetes@$KUBE_VERSION"
		go mod edit -tool k8s.io/kubernetes/cmd/kube-apiserver
		go mod tidy >&2
		minor=${KUBE_VERSION#v1.}
		minor=${minor%%.*}
		v=k8s.io/component-base/version
		go build -trimpath -o "$dir/kube-apiserver" \
			-ldflags="-s -X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor" \
			k8s.io/kubernetes/cmd/kube-apiserver >&2
	)
	echo "hack/kube-bins.sh: kube-apiserver built in $((SECONDS - start)) s" >&2
fi

if [[ ! -x $dir/etcd ]]; then
	echo "hack/kube-bins.sh: building etcd $ETCD_VERSION (Go module proxy)" >&2
	start=$SECONDS
	mkdir "$work/etcd"
	(
		cd "$work/etcd"
		go mod init mqsidecar.local/etcd >/dev/null 2>&1
		for m in go.etcd.io/etcd/api/v3 go.etcd.io/etcd/client/pkg/v3 go.etcd.io/etcd/client/v3 go.etcd.io/etcd/pkg/v3; do
			go mod edit -replace "$m=$m@$ETCD_VERSION"
		done
		go mod edit -require "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
		go mod edit -tool go.etcd.io/etcd/server/v3
		go mod tidy >&2
		go build -trimpath -ldflags=-s -o "$dir/etcd" go.etcd.io/etcd/server/v3 >&2
	)
	echo "hack/kube-bins.sh: etcd built in $((SECONDS - start)) s" >&2
fi
echo "$dir"
