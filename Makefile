# mqsidecar — every target a newcomer or CI needs. `make test` is what CI runs.
GO       ?= go
PKGS     := ./...
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
HARNESS  := e2e/harness
# Broker addresses for the e2e tests; the harness prints them (`$(HARNESS)/all.sh env`).
E2E_ENV   = eval "$$($(HARNESS)/all.sh env)"

.PHONY: all build demo test test-unit test-k8s test-e2e brokers-start brokers-stop bench lint fmt release chart-package image

all: lint test

## build: bin/mqsidecar (the sidecar) and bin/mqsidecar-injector (the Kubernetes webhook),
## built as the container image builds them: -tags nodemo leaves `mqsidecar demo` and its
## in-process Kafka (franz-go's kfake) out (`make demo` runs the demo from source);
## grpcnotrace leaves out gRPC's x/net/trace pages, which switch off dead code elimination.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags nodemo,grpcnotrace -ldflags '$(LDFLAGS)' -o bin/ ./cmd/mqsidecar ./cmd/mqsidecar-injector

demo:
	$(GO) run ./cmd/mqsidecar demo

## release: dist/ with both binaries for each of RELEASE_PLATFORMS (dist/<os>_<arch>/, built
## as `make build` and the image build them), the packaged chart and dist/SHA256SUMS.
## image: the container image without an engine, from those binaries: an OCI image layout in
## dist/image checked against the Dockerfile (hack/image); PUSH=registry/repo:tag pushes it.
RELEASE_PLATFORMS := linux/amd64 linux/arm64
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
release: chart-package
	rm -rf dist/linux_* dist/SHA256SUMS
	@set -e; for p in $(RELEASE_PLATFORMS); do os=$${p%/*}; arch=$${p#*/}; echo "build $$os/$$arch"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -tags nodemo,grpcnotrace -ldflags '$(LDFLAGS)' \
	    -o dist/$${os}_$$arch/ ./cmd/mqsidecar ./cmd/mqsidecar-injector; done
	cd dist && sha256sum linux_*/* mqsidecar-*.tgz > SHA256SUMS && cat SHA256SUMS

chart-package:
	mkdir -p dist && rm -f dist/mqsidecar-*.tgz && "$$(hack/helm.sh)" package charts/mqsidecar --destination dist

image: release
	cd hack/image && $(GO) run . --dist ../../dist --out ../../dist/image --version $(VERSION) \
	  --revision $(REVISION) --platforms $(shell echo $(RELEASE_PLATFORMS) | tr ' ' ,) $(if $(PUSH),--push $(PUSH))

## test: everything — lint, unit and kfake integration tests (race detector), Kubernetes
## checks, then real brokers started on loopback and the e2e suite against them.
test: lint test-unit test-k8s test-e2e

## lint: gofmt, go vet (with and without the e2e tag) and golangci-lint (.golangci.yml),
## installed once into $(LINT_BIN) (a cold install builds it from the Go module proxy).
GOLANGCI_LINT_VERSION := v2.15.0
LINT_BIN := $(or $(MQSIDECAR_CACHE),$(or $(HOME),/root)/.cache/mqsidecar)/bin
GOLANGCI_LINT := $(LINT_BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)

lint: $(GOLANGCI_LINT)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags e2e $(PKGS)
	$(GOLANGCI_LINT) run $(PKGS)

$(GOLANGCI_LINT):
	@mkdir -p $(LINT_BIN)/.install
	GOBIN=$(LINT_BIN)/.install $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(LINT_BIN)/.install/golangci-lint $@

test-unit:
	$(GO) test -race -count=1 -timeout 15m $(PKGS)
	$(GO) test -run '^$$' -fuzz '^FuzzReadResponse$$' -fuzztime 20s ./internal/appclient/
	$(GO) test -run '^$$' -fuzz '^FuzzPushHeaders$$' -fuzztime 10s -fuzzminimizetime 0s ./ackgate/

test-k8s:
	bash hack/test-k8s.sh

brokers-start:
	$(HARNESS)/all.sh start

brokers-stop:
	$(HARNESS)/all.sh stop

## test-e2e: starts the brokers (installing what is missing), runs the e2e-tagged tests
## against them and the built binary, and stops the brokers again, pass or fail.
## Adapter packages run one at a time (-p 1): their tests restart brokers. No -race here:
## the RocketMQ Go client has data races of its own ("Known client limitations" in the
## package doc, adapters/rocketmq/rocketmq.go); our code is race-checked by test-unit.
## The doctor's tests (e2e/doctor_e2e_test.go) also need the broker shapes of
## $(HARNESS)/doctor/shapes.sh: a 3-node Kafka cluster, a SYNC_FLUSH RocketMQ, a RabbitMQ
## node with the management API.
E2E_ADAPTERS := ./adapters/kafka/ ./adapters/rabbitmq/ ./adapters/rocketmq/ ./dedup/redisstore/ ./sidecar/ ./publish/
test-e2e: build
	@set -e; $(HARNESS)/all.sh start; \
	status=0; $(HARNESS)/doctor/shapes.sh start || status=$$?; \
	[ $$status -ne 0 ] || ( set -e; $(E2E_ENV); eval "$$($(HARNESS)/doctor/shapes.sh env)"; \
	  export MQSIDECAR_BIN=$(CURDIR)/bin/mqsidecar; \
	  $(GO) test -tags e2e -count=1 -p 1 -timeout 20m $(E2E_ADAPTERS); \
	  $(GO) test -tags e2e -count=1 -timeout 20m -run E2E -v ./e2e/ ) || status=$$?; \
	$(HARNESS)/doctor/shapes.sh stop || true; $(HARNESS)/all.sh stop || true; exit $$status

## bench: throughput, latency, RSS and CPU per message (medians of several runs, beside the
## hand-written loop) for each app profile, CPU while idle and while every lane is held, the
## fleet, tracing on vs off, publishing beside Dapr's publish API (hack/daprd.sh builds a daprd
## once; docs/performance.md). -cpuprofile PREFIX keeps a CPU profile of every run.
bench:
	$(GO) run ./bench -runs 3 -scenario partition
	$(GO) run ./bench -runs 3 -scenario key
	$(GO) run ./bench -runs 3 -scenario tracing
	$(GO) run ./bench -runs 3 -scenario idle
	$(GO) run ./bench -runs 3 -scenario held
	$(GO) run ./bench -runs 3 -scenario fleet
	$(GO) run ./bench -runs 3 -scenario share
	$(GO) run ./bench -runs 3 -scenario bytes
	daprd=$$(hack/daprd.sh) && BENCH_DAPRD=$$daprd $(GO) run ./bench -runs 3 -scenario publish
	$(GO) test ./ackgate/ -run '^$$' -bench '^BenchmarkPushClient$$' -benchtime 20000x -count 5
	$(GO) test ./ackgate/ -run '^$$' -bench '^BenchmarkGateTracing$$' -benchtime 20000x -count 5

fmt:
	gofmt -w $$(git ls-files '*.go')
