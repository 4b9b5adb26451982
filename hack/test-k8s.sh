#!/usr/bin/env bash
# hack/test-k8s.sh — every Kubernetes-side test, without a cluster or a Docker engine.
#
#   1. installs helm into .tools/bin if missing (hack/helm.sh, via the Go module proxy), and
#      builds kube-apiserver and etcd into ~/.cache/mqsidecar if missing (hack/kube-bins.sh,
#      via the Go module proxy too; several minutes the first time);
#   2. injector: webhook handler golden tests, JSON patches applied and asserted, TLS
#      certificate rotation, the mqsidecar-injector command's flags and exit statuses, the
#      chart's examples run through the webhook and loaded with the sidecar's config loader
#      (go test ./injector/... ./cmd/mqsidecar-injector/...);
#   3. chart: helm template with default and full values, every object strictly decoded
#      into k8s.io/api types, helm lint --strict, values.schema.json refusals, and the
#      rendered injector args run through the real injector command, the root command of
#      cmd/mqsidecar-injector, and TestAgainstAPIServer: a real kube-apiserver and etcd on
#      loopback with the chart's webhook registered, pods, a Deployment, a StatefulSet and
#      its pod created through the API and what the API server stored asserted
#      (go test ./charts/test/...);
#   4. Dockerfile: static checks and its build command run outside Docker
#      (hack/check-dockerfile.sh);
#   5. the engine-less image builder (hack/image, its own Go module): images for amd64 and
#      arm64 assembled as an OCI image layout and checked against the Dockerfile's final
#      stage (user, entrypoint, command, port, labels, files and their platform).
#
# Works from a fresh machine that reaches only the Go module proxy. Exit status is non-zero
# if anything failed. Set GOTESTFLAGS to pass flags to go test (e.g. -race, -v).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

HELM=$(hack/helm.sh)
export HELM
echo "== helm: $HELM ($(go version -m "$HELM" | awk '$1 == "mod" {print $3}'))"

# MQSIDECAR_SKIP_APISERVER=1 leaves the API-server test out (it then skips, saying so), e.g.
# on a machine where building kube-apiserver the first time is too slow.
if [[ ${MQSIDECAR_SKIP_APISERVER:-} == 1 ]]; then
	unset MQSIDECAR_KUBE_BIN_DIR
	echo "== kube-apiserver: MQSIDECAR_SKIP_APISERVER=1, TestAgainstAPIServer will skip"
else
	MQSIDECAR_KUBE_BIN_DIR=$(hack/kube-bins.sh)
	export MQSIDECAR_KUBE_BIN_DIR
	echo "== kube-apiserver and etcd: $MQSIDECAR_KUBE_BIN_DIR ($("$MQSIDECAR_KUBE_BIN_DIR/kube-apiserver" --version), etcd $("$MQSIDECAR_KUBE_BIN_DIR/etcd" --version | awk '/^etcd Version/ {print $3}'))"
fi

echo "== go test ./injector/... ./cmd/mqsidecar-injector/... ./charts/test/..."
# shellcheck disable=SC2086 # GOTESTFLAGS is a list of flags
go test -count=1 ${GOTESTFLAGS:-} ./injector/... ./cmd/mqsidecar-injector/... ./charts/test/...

echo "== helm package (what make chart-package and make release ship)"
pkg=$(mktemp -d)
"$HELM" package charts/mqsidecar --destination "$pkg" >/dev/null
files=$(tar -tzf "$pkg"/mqsidecar-*.tgz)
grep -qx 'mqsidecar/values.schema.json' <<<"$files" || { echo "the packaged chart lacks values.schema.json" >&2; exit 1; }
"$HELM" template mq "$pkg"/mqsidecar-*.tgz --namespace mqsidecar-system --kube-version 1.31.0 >/dev/null
rm -rf "$pkg"
echo "packaged and rendered"

echo "== Dockerfile"
hack/check-dockerfile.sh

echo "== hack/image (OCI image without a container engine)"
# shellcheck disable=SC2086
(cd hack/image && go vet ./... && go test -count=1 ${GOTESTFLAGS:-} ./...)
