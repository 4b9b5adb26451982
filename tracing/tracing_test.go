package tracing

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/config"
	"github.com/mqsidecar/mqsidecar/internal/otlptest"
)

func TestOffBuildsNothing(t *testing.T) {
	for name, c := range map[string]struct {
		cfg config.Tracing
		env string
	}{
		"disabled":          {config.Tracing{Enabled: false, Endpoint: "http://127.0.0.1:1"}, ""},
		"OTEL_SDK_DISABLED": {config.Tracing{Enabled: true}, "true"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("OTEL_SDK_DISABLED", c.env)
			tp, shutdown, err := Setup(context.Background(), c.cfg, "v1", slog.Default())
			if err != nil || tp != nil {
				t.Fatalf("Setup = %v, %v; want no provider", tp, err)
			}
			if err := shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			log := slog.Default()
			if Logger(log, tp) != log {
				t.Fatal("the logger was wrapped with tracing off")
			}
		})
	}
}

// TestProtocol: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, picks
// the exporter: a span reaches an HTTP receiver with http/protobuf (and by default), a gRPC
// one with grpc; an unsupported protocol is refused.
func TestProtocol(t *testing.T) {
	for _, c := range []struct {
		name, traces, general string
		grpc                  bool
	}{
		{"default", "", "", false},
		{"grpc", "", "grpc", true},
		{"traces grpc over general http", "grpc", "http/protobuf", true},
		{"traces http over general grpc", "http/protobuf", "grpc", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", c.traces)
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", c.general)
			rcv := otlptest.New(t)
			if c.grpc {
				rcv = otlptest.NewGRPC(t)
			}
			exportOne(t, config.Tracing{Enabled: true, Endpoint: rcv.URL()})
			if spans := rcv.Spans(); len(spans) != 1 || spans[0].Name != "work" || len(rcv.Errors()) > 0 {
				t.Fatalf("received %+v, errors %v; want the one span", spans, rcv.Errors())
			}
		})
	}
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
	_, _, err := Setup(context.Background(), config.Tracing{Enabled: true}, "v1", slog.Default())
	if err == nil || !strings.Contains(err.Error(), "grpc") || !strings.Contains(err.Error(), "http/protobuf") {
		t.Fatalf("http/json: err = %v, want a refusal naming grpc and http/protobuf", err)
	}
}

// exportOne sets tracing up with cfg, records one span "work" and shuts down (which flushes).
func exportOne(t *testing.T, cfg config.Tracing) {
	t.Helper()
	tp, shutdown, err := Setup(context.Background(), cfg, "v1", slog.Default())
	if err != nil || tp == nil {
		t.Fatalf("Setup: %v, %v", tp, err)
	}
	_, span := tp.Tracer("test").Start(context.Background(), "work")
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestExportsToTheEndpoint: a span ends up at tracing.endpoint's /v1/traces with the
// service's resource (OTEL_RESOURCE_ATTRIBUTES added), and a log line of its context carries
// its IDs.
func TestExportsToTheEndpoint(t *testing.T) {
	rcv := otlptest.New(t)
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=orders-0")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1") // overridden by tracing.endpoint
	tp, shutdown, err := Setup(context.Background(), config.Tracing{Enabled: true, Endpoint: rcv.URL() + "/"}, "v9.9.9", slog.Default())
	if err != nil || tp == nil {
		t.Fatalf("Setup: %v, %v", tp, err)
	}
	var buf bytes.Buffer
	log := Logger(slog.New(slog.NewJSONHandler(&buf, nil)), tp)
	ctx, span := tp.Tracer("test").Start(context.Background(), "work")
	log.InfoContext(ctx, "inside")
	log.Info("outside")
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	spans := rcv.Spans()
	if len(spans) != 1 || len(rcv.Errors()) > 0 {
		t.Fatalf("received %+v, errors %v; want the one span", spans, rcv.Errors())
	}
	s := spans[0]
	if s.Name != "work" || s.Resource["service.name"] != "mqsidecar" || s.Resource["service.version"] != "v9.9.9" || s.Resource["k8s.pod.name"] != "orders-0" {
		t.Errorf("span %q resource %v", s.Name, s.Resource)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var in, out map[string]any
	if len(lines) != 2 || json.Unmarshal([]byte(lines[0]), &in) != nil || json.Unmarshal([]byte(lines[1]), &out) != nil {
		t.Fatalf("log: %q", buf.String())
	}
	if in["trace_id"] != s.TraceID || in["span_id"] != s.SpanID {
		t.Errorf("log line in the span: trace_id %v span_id %v, want %s %s", in["trace_id"], in["span_id"], s.TraceID, s.SpanID)
	}
	if _, ok := out["trace_id"]; ok {
		t.Errorf("log line outside any span has a trace_id: %v", out)
	}
}
