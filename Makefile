# mqsidecar — every target a newcomer or CI needs. `make test` is what CI runs.
GO       ?= go
PKGS     := ./...
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
HARNESS  := e2e/harness
# Broker addresses for the e2e tests; the harness prints them (`$(HARNESS)/all.sh env`).
E2E_ENV   = eval "$$($(HARNESS)/all.sh env)"

.PHONY: all build demo test test-unit test-k8s test-e2e brokers-start brokers-stop bench lint fmt

all: lint test

## build: bin/mqsidecar (the sidecar) and bin/mqsidecar-injector (the Kubernetes webhook),
## built as the container image builds them: -tags nodemo leaves `mqsidecar demo` and its
## in-process Kafka (franz-go's kfake) out (`make demo` runs the demo from source).
build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags nodemo -ldflags '$(LDFLAGS)' -o bin/ ./cmd/mqsidecar ./cmd/mqsidecar-injector

demo:
	$(GO) run ./cmd/mqsidecar demo

## test: everything — lint, unit and kfake integration tests (race detector), Kubernetes
## checks, then real brokers started on loopback and the e2e suite against them.
test: lint test-unit test-k8s test-e2e

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags e2e $(PKGS)

test-unit:
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

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
E2E_ADAPTERS := ./adapters/kafka/ ./adapters/rabbitmq/ ./adapters/rocketmq/ ./dedup/redisstore/ ./sidecar/
test-e2e: build
	@set -e; $(HARNESS)/all.sh start; \
	status=0; ( set -e; $(E2E_ENV); export MQSIDECAR_BIN=$(CURDIR)/bin/mqsidecar; \
	  $(GO) test -tags e2e -count=1 -p 1 -timeout 20m $(E2E_ADAPTERS); \
	  $(GO) test -tags e2e -count=1 -timeout 20m -run E2E -v ./e2e/ ) || status=$$?; \
	$(HARNESS)/all.sh stop || true; exit $$status

## bench: throughput, latency, RSS and CPU per message (medians of several runs, beside the
## hand-written loop) for each app profile, CPU while idle and while every lane is held, the
## fleet (docs/performance.md). -cpuprofile PREFIX keeps a CPU profile of every run.
bench:
	$(GO) run ./bench -runs 3 -scenario partition
	$(GO) run ./bench -runs 3 -scenario key
	$(GO) run ./bench -runs 3 -scenario idle
	$(GO) run ./bench -runs 3 -scenario held
	$(GO) run ./bench -runs 3 -scenario fleet

fmt:
	gofmt -w $$(git ls-files '*.go')
