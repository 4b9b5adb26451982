package tracing

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// captureClient is an otlptrace.Client that keeps what it is asked to upload, as bytes
// decoded again (what a collector reads).
type captureClient struct {
	mu  sync.Mutex
	got []*tracepb.ResourceSpans
}

func (c *captureClient) Start(context.Context) error { return nil }
func (c *captureClient) Stop(context.Context) error  { return nil }
func (c *captureClient) UploadTraces(_ context.Context, rs []*tracepb.ResourceSpans) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range rs {
		raw, err := proto.Marshal(r)
		if err != nil {
			return err
		}
		var back tracepb.ResourceSpans
		if err := proto.Unmarshal(raw, &back); err != nil {
			return err
		}
		c.got = append(c.got, &back)
	}
	return nil
}

// testSpans covers what a span can hold: every attribute type, events, links, a remote
// parent, trace state, statuses, dropped counts, two scopes and two resources.
func testSpans(t *testing.T) []sdktrace.ReadOnlySpan {
	t.Helper()
	ts, err := trace.ParseTraceState("vendor=abc,other=1")
	if err != nil {
		t.Fatal(err)
	}
	tid := trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36}
	sc := func(sid byte, remote bool) trace.SpanContext {
		return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: trace.SpanID{sid, 1, 2, 3, 4, 5, 6, 7}, TraceFlags: trace.FlagsSampled, TraceState: ts, Remote: remote})
	}
	long := strings.Repeat("x", 300) // lengths past one varint byte
	attrs := []attribute.KeyValue{
		attribute.String("s", "v"), attribute.String("empty", ""), attribute.String("long", long), attribute.String("mid", strings.Repeat("y", 150)),
		attribute.Bool("t", true), attribute.Bool("f", false), attribute.Int64("i", -42), attribute.Int("zero", 0),
		attribute.Float64("d", 2.5), attribute.StringSlice("ss", []string{"a", "", long}),
		attribute.BoolSlice("bs", []bool{true, false}), attribute.Int64Slice("is", []int64{1, -1, 0}),
		attribute.Float64Slice("ds", []float64{0.5, 0}), attribute.ByteSlice("bytes", []byte{0, 1, 2}),
		attribute.Slice("mixed", attribute.StringValue("x"), attribute.IntValue(7)),
		attribute.Map("map", attribute.String("k", "v"), attribute.Int("n", 3)),
		{Key: "none"},
	}
	res1 := resource.NewSchemaless(attribute.String("service.name", "mqsidecar"), attribute.String("k8s.pod.name", "orders-0"))
	res2 := resource.NewWithAttributes("https://opentelemetry.io/schemas/1.26.0", attribute.String("service.name", "other"))
	scope1 := instrumentation.Scope{Name: "github.com/mqsidecar/mqsidecar/ackgate", Version: "v1"}
	scope2 := instrumentation.Scope{Name: "s2", SchemaURL: "https://opentelemetry.io/schemas/1.26.0", Attributes: attribute.NewSet(attribute.String("a", "b"))}
	start := time.Unix(1700000000, 123456789)
	stubs := tracetest.SpanStubs{
		{Name: "process orders", SpanContext: sc(1, false), Parent: sc(9, true), SpanKind: trace.SpanKindConsumer,
			StartTime: start, EndTime: start.Add(time.Millisecond), Attributes: attrs,
			Status: sdktrace.Status{Code: codes.Error, Description: "not delivered: dropped"}, DroppedAttributes: 3,
			Resource: res1, InstrumentationScope: scope1},
		{Name: "POST", SpanContext: sc(2, false), Parent: sc(1, false), SpanKind: trace.SpanKindClient,
			StartTime: start, EndTime: start.Add(time.Microsecond), Attributes: attrs[:3],
			Events: []sdktrace.Event{{Name: "retry", Time: start, Attributes: attrs[3:6], DroppedAttributeCount: 1}, {Name: long}},
			Links:  []sdktrace.Link{{SpanContext: sc(7, true), Attributes: attrs[:2], DroppedAttributeCount: 2}},
			Status: sdktrace.Status{Code: codes.Ok}, DroppedEvents: 1, DroppedLinks: 4, Resource: res1, InstrumentationScope: scope1},
		{Name: "root", SpanContext: sc(3, false), SpanKind: trace.SpanKindInternal, Resource: res1, InstrumentationScope: scope2},
		{Name: "unscoped", SpanContext: sc(4, false), SpanKind: trace.SpanKindServer, StartTime: start, EndTime: start, Resource: res2},
		{Name: "producer", SpanContext: sc(5, false), SpanKind: trace.SpanKindProducer, Resource: res1, InstrumentationScope: scope1},
	}
	return stubs.Snapshots()
}

// exporters returns the SDK's OTLP exporter sending to sdk and ours (NewExporter) to ours.
func exporters(t *testing.T, sdk, ours *captureClient) (sdkExp, ourExp sdktrace.SpanExporter) {
	t.Helper()
	sdkExp, err := otlptrace.New(context.Background(), sdk)
	if err != nil {
		t.Fatal(err)
	}
	if ourExp, err = NewExporter(context.Background(), ours); err != nil {
		t.Fatal(err)
	}
	return sdkExp, ourExp
}

// TestExporterMatchesSDK: what NewExporter sends decodes to exactly what the SDK's OTLP
// exporter sends for the same spans (its ResourceSpans in any order).
func TestExporterMatchesSDK(t *testing.T) {
	spans := testSpans(t)
	var sdk, ours captureClient
	sdkExp, ourExp := exporters(t, &sdk, &ours)
	for range 2 { // the second batch reuses the buffer and the cached resources and scopes
		sdk.got, ours.got = nil, nil
		if err := sdkExp.ExportSpans(context.Background(), spans); err != nil {
			t.Fatal(err)
		}
		if err := ourExp.ExportSpans(context.Background(), spans); err != nil {
			t.Fatal(err)
		}
		if len(ours.got) != 2 || len(sdk.got) != 2 {
			t.Fatalf("%d and %d ResourceSpans, want 2 each", len(ours.got), len(sdk.got))
		}
		for _, o := range ours.got {
			found := false
			for _, s := range sdk.got {
				found = found || proto.Equal(o, s)
			}
			if !found {
				t.Errorf("ours:\n%s\nnot among the SDK's:\n%s\n%s", protojson.Format(o), protojson.Format(sdk.got[0]), protojson.Format(sdk.got[1]))
			}
		}
	}
	if err := ourExp.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := ourExp.ExportSpans(context.Background(), spans); err != nil || len(ours.got) != 2 {
		t.Errorf("after Shutdown: %v, %d uploads; want nothing sent", err, len(ours.got)-2)
	}
}

// TestExporterLengthsOfAnySize: the lengths reserved ahead (a span's, a ScopeSpans') are
// right whether the message is shorter or longer than they fit: spans from a few bytes to
// past 16 KiB, and a batch past 2 MiB, encode as the SDK's exporter encodes them.
func TestExporterLengthsOfAnySize(t *testing.T) {
	start := time.Unix(1700000000, 0)
	var stubs tracetest.SpanStubs
	for i, n := range []int{0, 50, 100, 130, 16300, 16400, 20000, 1 << 20, 1<<20 + 100} {
		sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{byte(i + 1)}, TraceFlags: trace.FlagsSampled})
		s := tracetest.SpanStub{Name: "s", SpanContext: sc, StartTime: start, EndTime: start, InstrumentationScope: instrumentation.Scope{Name: "x"}}
		if n > 0 {
			s.Attributes = []attribute.KeyValue{attribute.String("v", strings.Repeat("z", n))}
		}
		stubs = append(stubs, s)
	}
	spans := stubs.Snapshots()
	for _, batch := range [][]sdktrace.ReadOnlySpan{spans[:1], spans[:2], spans[:4], spans[:7], spans} {
		var sdk, ours captureClient
		sdkExp, ourExp := exporters(t, &sdk, &ours)
		if err := sdkExp.ExportSpans(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
		if err := ourExp.ExportSpans(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
		if len(ours.got) != 1 || len(sdk.got) != 1 || !proto.Equal(ours.got[0], sdk.got[0]) {
			t.Errorf("%d spans: ours differ from the SDK's (%d and %d ResourceSpans)", len(batch), len(ours.got), len(sdk.got))
		}
	}
}
