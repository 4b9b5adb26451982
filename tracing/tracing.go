// Package tracing sets up OpenTelemetry traces for a running sidecar: the SDK's tracer
// provider with an OTLP exporter (HTTP/protobuf, or gRPC) and a batch span processor, configured by
// the tracing section (config.Tracing) and the standard OTEL_* environment variables. The
// spans themselves are recorded by the ack gate (ackgate, Options.Tracing), which knows the
// attempts and outcomes of a delivery; this package only builds what exports them, and the
// log handler that puts trace_id and span_id on the log lines of a delivery.
//
// Off (tracing.enabled false, or OTEL_SDK_DISABLED=true) means off: Setup returns a nil
// provider, no SDK is built, and the gate records nothing.
//
// Environment (read by the SDK and the exporter): OTEL_SERVICE_NAME (default "mqsidecar"),
// OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (default
// parentbased_always_on), OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ENDPOINT (tracing.endpoint
// overrides both), _HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE, _INSECURE (gRPC), and
// OTEL_BSP_*. OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, chooses
// http/protobuf (the default; a collector's :4318) or grpc (:4317); http/json is refused.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/mqsidecar/mqsidecar/config"
)

// ServiceName is service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say
// otherwise.
const ServiceName = "mqsidecar"

// Setup builds the tracer provider cfg asks for. It returns a nil provider and a no-op
// shutdown when tracing is off. Otherwise shutdown flushes the spans still batched and
// stops the exporter; call it once, after the gate has stopped. Export failures are logged
// (at most once a minute), never fatal.
func Setup(ctx context.Context, cfg config.Tracing, version string, log *slog.Logger) (trace.TracerProvider, func(context.Context) error, error) {
	noop := func(context.Context) error { return nil }
	if !cfg.Enabled || strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return nil, noop, nil
	}
	exp, err := exporter(ctx, cfg.Endpoint)
	if err != nil {
		return nil, noop, err
	}
	// Later sources win: the environment overrides the defaults.
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(ServiceName), semconv.ServiceVersion(version)),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, noop, fmt.Errorf("tracing: resource (OTEL_RESOURCE_ATTRIBUTES): %w", err)
	}
	otel.SetErrorHandler(rateLimited(log, time.Minute))
	// The sampler comes from OTEL_TRACES_SAMPLER (default parentbased_always_on), the
	// batching from OTEL_BSP_*.
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return tp, tp.Shutdown, nil
}

// exporter builds the OTLP exporter of the protocol OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or
// else OTEL_EXPORTER_OTLP_PROTOCOL names: http/protobuf (the default) or grpc. endpoint
// (tracing.endpoint), when set, overrides the endpoint variables: a base URL, to which the
// HTTP exporter adds /v1/traces; for gRPC, http:// means without TLS.
func exporter(ctx context.Context, endpoint string) (sdktrace.SpanExporter, error) {
	protocol, from := "http/protobuf", ""
	for _, v := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if p := strings.TrimSpace(os.Getenv(v)); p != "" {
			protocol, from = p, v
			break // the traces variable takes precedence
		}
	}
	var client otlptrace.Client
	switch protocol {
	case "http/protobuf":
		var opts []otlptracehttp.Option
		if endpoint != "" {
			opts = append(opts, otlptracehttp.WithEndpointURL(strings.TrimSuffix(endpoint, "/")+"/v1/traces"))
		}
		client = otlptracehttp.NewClient(opts...)
	case "grpc":
		var opts []otlptracegrpc.Option
		if endpoint != "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(strings.TrimSuffix(endpoint, "/")))
		}
		client = otlptracegrpc.NewClient(opts...)
	default:
		return nil, fmt.Errorf("tracing: %s=%s: mqsidecar exports OTLP over http/protobuf (a collector listens on :4318 for it) or grpc (:4317)", from, protocol)
	}
	exp, err := NewExporter(ctx, client)
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter (%s): %w", protocol, err)
	}
	return exp, nil
}

// rateLimited logs the SDK's errors (an unreachable collector) at most once per interval,
// counting the ones it did not log.
func rateLimited(log *slog.Logger, interval time.Duration) otel.ErrorHandler {
	var last, skipped atomic.Int64
	return otel.ErrorHandlerFunc(func(err error) {
		now := time.Now().UnixNano()
		prev := last.Load()
		if now-prev < int64(interval) || !last.CompareAndSwap(prev, now) {
			skipped.Add(1)
			return
		}
		log.Warn("tracing: spans not exported (logged at most once a minute)", "error", err, "suppressed", skipped.Swap(0))
	})
}

// Logger returns log with a handler that adds trace_id and span_id to every record logged
// with a context that carries a span (the gate logs a delivery's lines with its consumer
// span's context). Install it only when tracing is on: off, log is returned unchanged.
func Logger(log *slog.Logger, tp trace.TracerProvider) *slog.Logger {
	if tp == nil {
		return log
	}
	return slog.New(traceHandler{log.Handler()})
}

type traceHandler struct{ slog.Handler }

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(attrs)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.Handler.WithGroup(name)}
}
