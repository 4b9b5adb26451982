#!/usr/bin/env bash
# hack/check-dockerfile.sh — check the Dockerfile without a Docker engine.
#
# 1. Static checks of its key properties: multi-stage, pinned Go version not older than
#    go.mod's, CGO_ENABLED=0, -trimpath, version stamped with -X main.version, distroless
#    static nonroot final image with both binaries (the sidecar mqsidecar and the Kubernetes
#    injector mqsidecar-injector), numeric non-root USER, exec-form ENTRYPOINT running the
#    sidecar, a data directory owned by 65532, no default for BuildKit's platform ARGs
#    (TARGETOS/TARGETARCH: a default overrides --platform) and GOOS/GOARCH taken from them,
#    the OCI labels (source, revision, version, licenses).
# 2. The build itself: the RUN instruction after the "# build-command" marker is executed
#    verbatim (minus BuildKit --mount flags) in a copy of the tree filtered by .dockerignore,
#    exactly as Docker would see the context, and the results must be static ELF binaries
#    that were built with CGO_ENABLED=0 and -trimpath and report the stamped version; the
#    sidecar must not link any k8s.io module (those belong to the injector only).
#    Skipped, with a message, only while cmd/mqsidecar does not exist yet.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dockerfile="$root/Dockerfile"
fail=0
ok() { echo "  ok   $*"; }
bad() {
	echo "  FAIL $*"
	fail=1
}
check() { # check DESCRIPTION EXTENDED-REGEX [FILE-CONTENT]
	if grep -Eq -- "$2" <<<"$3"; then ok "$1"; else bad "$1 (no match for /$2/)"; fi
}

echo "Dockerfile static checks"
# Instructions with continuation lines joined, comments dropped.
instr=$(sed -e '/^[[:space:]]*#/d' "$dockerfile" | sed -e ':a' -e '/\\$/N; s/\\\n[[:space:]]*/ /; ta')
final=$(awk '/^FROM /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' <<<"$instr")

[[ $(grep -c '^FROM ' <<<"$instr") -ge 2 ]] && ok "multi-stage" || bad "multi-stage: want at least two FROM"
check "build stage is named" '^FROM .* AS build$' "$instr"
check "final image is distroless static nonroot" '^FROM gcr\.io/distroless/static-debian12:nonroot$' "$(grep '^FROM' <<<"$instr" | tail -1)"
check "numeric non-root USER in the final stage" '^USER 65532(:65532)?$' "$final"
check "exec-form ENTRYPOINT" '^ENTRYPOINT \["/usr/local/bin/mqsidecar"\]$' "$final"
check "final image ships the sidecar" '^COPY --from=build /out/mqsidecar /usr/local/bin/mqsidecar$' "$final"
check "final image ships the injector (charts/mqsidecar runs it)" \
	'^COPY --from=build /out/mqsidecar-injector /usr/local/bin/mqsidecar-injector$' "$final"
check "data dir /var/lib/mqsidecar owned by 65532" '^COPY --from=build --chown=65532:65532 [^ ]+ /var/lib/mqsidecar$' "$final"
# Platform: BuildKit sets the automatic platform ARGs from --platform, but a default given
# in the Dockerfile takes precedence (ARG TARGETARCH=amd64 made every platform amd64). The
# build stage must declare them bare and the build command must use them.
if grep -Eq '^ARG (TARGET|BUILD)(PLATFORM|OS|ARCH|VARIANT)=' <<<"$instr"; then
	bad "no default for BuildKit's platform ARGs: $(grep -E '^ARG (TARGET|BUILD)(PLATFORM|OS|ARCH|VARIANT)=' <<<"$instr" | tr '\n' ' ')"
else
	ok "no default for BuildKit's platform ARGs (TARGETOS, TARGETARCH, ...)"
fi
build_stage=$(awk '/^FROM .* AS build$/{f=1} f && /^FROM / && !/ AS build$/{exit} f' <<<"$instr")
check "build stage declares ARG TARGETOS" '^ARG TARGETOS$' "$build_stage"
check "build stage declares ARG TARGETARCH" '^ARG TARGETARCH$' "$build_stage"
check "build stage runs on the build platform (cross-compiles, no emulation)" '^FROM --platform=\$BUILDPLATFORM ' "$build_stage"
# OCI labels of the final image (hack/image checks the engine-less image against them).
for label in 'source="https://github\.com/mqsidecar/mqsidecar"' 'revision="\$\{REVISION\}"' \
	'version="\$\{VERSION\}"' 'licenses="Apache-2\.0"'; do
	check "final image label org.opencontainers.image.${label%%=*}" "^LABEL .*org\.opencontainers\.image\.$label" "$final"
done
check "final stage declares ARG REVISION" '^ARG REVISION(=.*)?$' "$final"
if grep -q '^ADD ' <<<"$instr"; then bad "no ADD (COPY only, no remote fetches)"; else ok "no ADD (COPY only, no remote fetches)"; fi
if grep -Eq '^FROM [^ ]*:latest' <<<"$instr"; then bad "no :latest base images"; else ok "no :latest base images"; fi

build_line=$(awk '/^# build-command/{f=1; next} f && /^RUN /{p=1} p{print} p && !/\\$/{exit}' "$dockerfile" |
	sed -e ':a' -e '/\\$/N; s/\\\n[[:space:]]*/ /; ta')
if [[ -z $build_line ]]; then
	bad "a RUN instruction follows the '# build-command' marker"
else
	check "build: CGO_ENABLED=0" 'CGO_ENABLED=0' "$build_line"
	check "build: GOOS/GOARCH from BuildKit's TARGETOS/TARGETARCH" 'GOOS=\$\{TARGETOS\} GOARCH=\$\{TARGETARCH\}' "$build_line"
	check "build: -trimpath" 'go build .*-trimpath' "$build_line"
	check "build: version via -X main.version=\${VERSION}" '-X main\.version=\$\{VERSION\}' "$build_line"
	check "build: both binaries into /out/ from ./cmd/mqsidecar ./cmd/mqsidecar-injector" \
		'-o /out/ \./cmd/mqsidecar \./cmd/mqsidecar-injector$' "$build_line"
fi

go_arg=$(sed -n 's/^ARG GO_VERSION=//p' "$dockerfile")
go_mod=$(awk '$1 == "go" {print $2; exit}' "$root/go.mod")
if [[ -n $go_arg ]] && [[ $(printf '%s\n%s\n' "$go_mod" "$go_arg" | sort -V | tail -1) == "$go_arg" ]]; then
	ok "GO_VERSION $go_arg >= go.mod's go $go_mod"
else
	bad "GO_VERSION '$go_arg' must be >= go.mod's go $go_mod"
fi

echo "Dockerfile build command"
if [[ ! -d $root/cmd/mqsidecar ]]; then
	echo "  SKIP cmd/mqsidecar does not exist yet: the build command was not run"
elif [[ -n $build_line ]]; then
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	# The context as Docker sees it: the tree minus .dockerignore matches (Docker's rules for
	# the plain patterns we use: "*" within a path element, "**" across elements, a match on a
	# directory excludes everything below it).
	python3 - "$root" "$work/ctx" <<'PY'
import os, re, shutil, sys
root, dst = sys.argv[1], sys.argv[2]
pats = []
for line in open(os.path.join(root, ".dockerignore")):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    if line.startswith("!"):
        sys.exit("check-dockerfile: '!' patterns are not supported by this check")
    rx = re.escape(line.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    pats.append(re.compile("^" + rx + "$"))
def excluded(rel):
    parts = rel.split("/")
    return any(p.match("/".join(parts[:i])) for p in pats for i in range(1, len(parts) + 1))
for dirpath, dirnames, filenames in os.walk(root):
    rel_dir = os.path.relpath(dirpath, root)
    rel_dir = "" if rel_dir == "." else rel_dir + "/"
    dirnames[:] = [d for d in dirnames if not excluded(rel_dir + d)]
    for f in filenames:
        rel = rel_dir + f
        if excluded(rel):
            continue
        os.makedirs(os.path.join(dst, rel_dir), exist_ok=True)
        shutil.copy2(os.path.join(root, rel), os.path.join(dst, rel), follow_symlinks=False)
PY
	version="check-$(date +%s)"
	cmd=$(sed -e 's/^RUN //' -e 's/--mount=[^ ]* //g' -e "s#/out/#$work/out/#g" <<<"$build_line")
	echo "  run  $cmd"
	if (cd "$work/ctx" && VERSION=$version TARGETOS=linux TARGETARCH=$(go env GOARCH) bash -euc "$cmd"); then
		ok "go build succeeded in the .dockerignore-filtered context"
		for name in mqsidecar mqsidecar-injector; do
			bin="$work/out/$name"
			if [[ ! -f $bin ]]; then
				bad "the build command wrote no $name"
				continue
			fi
			python3 - "$bin" <<'PY' && ok "$name: ELF without PT_INTERP/PT_DYNAMIC: statically linked" || bad "$name is not statically linked"
import struct, sys
with open(sys.argv[1], "rb") as f:
    h = f.read(64)
    assert h[:4] == b"\x7fELF" and h[4] == 2, "not a 64-bit ELF"
    phoff, = struct.unpack_from("<Q", h, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", h, 0x36)
    f.seek(phoff)
    types = {struct.unpack_from("<I", f.read(phentsize))[0] for _ in range(phnum)}
sys.exit(1 if types & {2, 3} else 0)  # PT_DYNAMIC=2, PT_INTERP=3
PY
			if command -v file >/dev/null; then echo "  info $name: $(file -b "$bin")"; fi
			info=$(go version -m "$bin")
			check "$name built with CGO_ENABLED=0" $'\tbuild\tCGO_ENABLED=0$' "$info"
			check "$name built with -trimpath" $'\tbuild\t-trimpath=true$' "$info"
			# (go does not record -ldflags in the build info under -trimpath; the version command
			# below proves the -X stamp reached main.version.)
			if out=$("$bin" version 2>&1) && [[ $out == "$name $version" ]]; then
				ok "'$name version' prints the stamped version ($out)"
			else
				bad "'$name version' does not print the stamped version $version: $out"
			fi
		done
		# The sidecar runs next to every application pod: the Kubernetes API packages (a
		# bigger binary, more resident memory) belong to the injector only.
		k8s=$(go version -m "$work/out/mqsidecar" | awk '$1 == "dep" && $2 ~ /^k8s\.io\// {print $2}')
		if [[ -z $k8s ]]; then ok "mqsidecar links no k8s.io module"; else bad "mqsidecar links k8s.io modules: ${k8s//$'\n'/ }"; fi
		if go version -m "$work/out/mqsidecar-injector" 2>/dev/null | grep -Eq $'^\tdep\tk8s\\.io/api\t'; then
			ok "mqsidecar-injector links k8s.io/api (so the check above can see k8s.io modules)"
		else
			bad "mqsidecar-injector does not list k8s.io/api in its build info"
		fi
	else
		bad "the Dockerfile build command failed"
	fi
fi

if [[ $fail -ne 0 ]]; then
	echo "check-dockerfile: FAILED" >&2
	exit 1
fi
echo "check-dockerfile: all checks passed"
