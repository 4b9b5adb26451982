#!/usr/bin/env bash
# hack/helm.sh — make sure a pinned helm binary exists in <repo>/.tools/bin and print its path.
#
# Helm is built from source through the Go module proxy (the only network a fresh machine or CI
# has), so no release tarball is downloaded. The main go.mod is never touched: `go install
# pkg@version` builds in its own module context.
#
# Usage: helm=$(hack/helm.sh)        # installs on first use, then prints the path
# Env:   HELM_VERSION (default v3.22.0)
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="$root/.tools/bin"
helm="$bin/helm"

# `go version -m` reads the module version embedded by the Go toolchain, which is reliable for a
# go-installed helm (helm's own `version` output depends on release ldflags we do not set).
installed_version() {
	go version -m "$helm" 2>/dev/null | awk '$1 == "mod" && $2 == "helm.sh/helm/v3" { print $3 }'
}

if [[ -x $helm && "$(installed_version)" == "$HELM_VERSION" ]]; then
	echo "$helm"
	exit 0
fi

echo "hack/helm.sh: installing helm $HELM_VERSION into $bin (go install, may take a few minutes)" >&2
mkdir -p "$bin"
# GOFLAGS is cleared so a caller's -mod=vendor or similar cannot break the out-of-module build.
GOFLAGS= GOBIN="$bin" CGO_ENABLED=0 go install "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
got=$(installed_version)
if [[ $got != "$HELM_VERSION" ]]; then
	echo "hack/helm.sh: installed helm reports module version '$got', want $HELM_VERSION" >&2
	exit 1
fi
echo "$helm"
