package ackgate

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/mqsidecar/mqsidecar/tracing"
)

// marshalClient is an otlptrace.Client that encodes each request as the HTTP and gRPC
// clients do and sends it nowhere.
type marshalClient struct{}

func (marshalClient) Start(context.Context) error { return nil }
func (marshalClient) Stop(context.Context) error  { return nil }
func (marshalClient) UploadTraces(_ context.Context, rs []*tracepb.ResourceSpans) error {
	for _, r := range rs {
		if _, err := proto.Marshal(r); err != nil {
			return err
		}
	}
	return nil
}

func mustExporter(b *testing.B, c otlptrace.Client) sdktrace.SpanExporter {
	exp, err := tracing.NewExporter(context.Background(), c)
	if err != nil {
		b.Fatal(err)
	}
	return exp
}

// discardExporter drops the spans the batch processor hands it.
type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

// BenchmarkDeliverySpans is the CPU and allocations of one delivery's spans (the consumer
// span, one push span, its traceparent) in this process alone, with no push and no store:
// what the gate adds per message with tracing on, at 100% sampling. export=discard stops at
// the batch processor; export=sdk converts and encodes them as the SDK's OTLP exporter does,
// export=otlp as the sidecar's (tracing.NewExporter).
func BenchmarkDeliverySpans(b *testing.B) {
	for _, c := range []struct {
		name string
		exp  sdktrace.SpanExporter
	}{{"discard", discardExporter{}}, {"sdk", otlptrace.NewUnstarted(marshalClient{})}, {"otlp", mustExporter(b, marshalClient{})}} {
		b.Run("export="+c.name, func(b *testing.B) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(c.exp, sdktrace.WithBlocking()))
			g := &Gate{tracer: newTracer(Options{Tracing: Tracing{Provider: tp}, Push: PushOptions{URL: "http://127.0.0.1:8080/events"}})}
			d := benchDelivery(0)
			sink := func(string, string) {}
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				it := &item{d: d}
				g.startDelivery(it)
				ctx, span := g.startPush(context.Background(), it)
				traceContext.Inject(ctx, lineCarrier(sink))
				g.endPush(span, 1, Result{Status: 200, Verdict: Success})
				it.pushes = 1
				it.trace.outcome = "delivered"
				g.endDelivery(it, nil)
			}
			if err := tp.Shutdown(context.Background()); err != nil {
				b.Fatal(err)
			}
			// The process's CPU, the batch processor's goroutine and the GC included.
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
		})
	}
}
