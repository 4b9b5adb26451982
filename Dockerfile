# syntax=docker/dockerfile:1
#
# mqsidecar: static Go binaries on distroless, running as non-root (uid/gid 65532).
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg REVISION=$(git rev-parse HEAD) -t mqsidecar .
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg VERSION=... \
#     --build-arg REVISION=... -t registry.example.com/team/mqsidecar:VERSION --push .
#   docker run --rm -v $PWD/mqsidecar.yaml:/etc/mqsidecar/config.yaml:ro \
#     -e MQSIDECAR_ADMIN_LISTEN=0.0.0.0:9464 -p 9464:9464 mqsidecar
#
# The same image holds the Kubernetes injector, a separate binary so that the sidecar links
# no Kubernetes API packages: /usr/local/bin/mqsidecar-injector (see charts/mqsidecar, which
# sets it as the injector container's command). The sidecar stays the entrypoint.
# hack/check-dockerfile.sh checks this file statically and runs the build command below
# outside Docker (there is no Docker engine in CI); hack/image builds the same image
# without an engine (an OCI image layout, `make image`) and checks it against this file.

ARG GO_VERSION=1.26.8

# The build stage runs on the build machine's platform and cross-compiles, which is fast
# and needs no emulation for multi-arch images.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first: this layer stays cached until go.mod/go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
# Declared without defaults: BuildKit fills them from --platform, and a default here would
# win over it (`buildx --platform linux/arm64` shipped amd64 binaries). hack/check-dockerfile.sh
# refuses a default.
ARG TARGETOS
ARG TARGETARCH
# -tags nodemo leaves `mqsidecar demo` and the in-process Kafka it embeds (franz-go's kfake)
# out of the image; grpcnotrace leaves out gRPC's x/net/trace pages, which would switch off
# the linker's dead code elimination (11 MB more binary). cmd/mqsidecar's tests check that
# this line keeps both tags.
# build-command (hack/check-dockerfile.sh runs the next RUN instruction verbatim)
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} GOFLAGS=-buildvcs=false \
    go build -trimpath -tags nodemo,grpcnotrace -ldflags="-s -w -X main.version=${VERSION}" -o /out/ ./cmd/mqsidecar ./cmd/mqsidecar-injector
# The data directory for the dedup store. distroless has no shell to mkdir/chown in, so
# it is made here and copied with its owner set. data/ matches the default dedup.path
# (./data/dedup.db) relative to the WORKDIR below.
RUN mkdir -p /out/var-lib-mqsidecar/data

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mqsidecar" \
      org.opencontainers.image.description="Consumes Kafka, RocketMQ or RabbitMQ and pushes each message to a local app over HTTP" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/mqsidecar/mqsidecar" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/mqsidecar /usr/local/bin/mqsidecar
COPY --from=build /out/mqsidecar-injector /usr/local/bin/mqsidecar-injector
COPY --from=build --chown=65532:65532 /out/var-lib-mqsidecar /var/lib/mqsidecar
WORKDIR /var/lib/mqsidecar
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# Admin endpoints (/healthz /readyz /metrics). The sidecar binds 127.0.0.1:9464 unless
# admin.listen / MQSIDECAR_ADMIN_LISTEN says otherwise; the injector sets 0.0.0.0:9464.
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/mqsidecar"]
CMD ["run", "--config", "/etc/mqsidecar/config.yaml"]
