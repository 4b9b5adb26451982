package main

import (
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// The receiver counts the spans of every resource and scope, and nothing else (the
// resource's and scope's own fields, the spans' attributes are skipped).
func TestCountSpans(t *testing.T) {
	attr := []*commonpb.KeyValue{{Key: "k", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "v"}}}}
	spans := func(n int) []*tracepb.Span {
		var out []*tracepb.Span
		for range n {
			out = append(out, &tracepb.Span{Name: "s", TraceId: make([]byte, 16), SpanId: make([]byte, 8), Attributes: attr})
		}
		return out
	}
	req := &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{
		{Resource: &resourcepb.Resource{Attributes: attr}, ScopeSpans: []*tracepb.ScopeSpans{
			{Scope: &commonpb.InstrumentationScope{Name: "a"}, Spans: spans(3)},
			{Scope: &commonpb.InstrumentationScope{Name: "b"}, Spans: spans(2)},
		}},
		{ScopeSpans: []*tracepb.ScopeSpans{{Spans: spans(4)}}, SchemaUrl: "x"},
	}}
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := countSpans(b); err != nil || n != 9 {
		t.Fatalf("countSpans = %d, %v; want 9", n, err)
	}
	if _, err := countSpans(b[:len(b)-1]); err == nil {
		t.Fatal("a truncated request was counted without an error")
	}
}
