package tracing

import (
	"context"
	"fmt"
	"math"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The exporter here is the OTLP exporter of the otel SDK (otlptrace.Exporter) with a
// cheaper conversion: the SDK's converts every span into a tree of protobuf structs (one
// allocation per span, attribute, value, ID and status) that the client then encodes; at
// 100% sampling, two spans per message, that was a third of what tracing cost the sidecar
// (BenchmarkGateTracing). This one writes the OTLP encoding of a batch straight into one
// reused buffer, and hands the client each ResourceSpans as a message whose content is that
// encoding (its unknown fields, which protobuf writes out unchanged). The bytes on the wire
// are the same protobuf; TestExporterMatchesSDK decodes them and compares them with the
// SDK's conversion of the same spans.

// NewExporter returns a span exporter that sends through client (otlptracehttp.NewClient,
// otlptracegrpc.NewClient), which it starts.
func NewExporter(ctx context.Context, client otlptrace.Client) (sdktrace.SpanExporter, error) {
	if err := client.Start(ctx); err != nil {
		return nil, err
	}
	return &otlpExporter{client: client, resources: map[*resource.Resource][]byte{}, scopes: map[instrumentation.Scope][]byte{}}, nil
}

type otlpExporter struct {
	client otlptrace.Client

	mu        sync.Mutex // one export at a time (the batch processor makes one anyway)
	stopped   bool
	buf       []byte                           // the batch's encoding, reused
	resources map[*resource.Resource][]byte    // a resource's encoded Resource message
	scopes    map[instrumentation.Scope][]byte // a scope's encoded InstrumentationScope
	groups    []group                          // the batch's spans by resource and scope, reused
	msgs      []*tracepb.ResourceSpans         // reused
}

// group is the spans of one resource and scope, in the order they came.
type group struct {
	res   *resource.Resource
	scope instrumentation.Scope
	spans []sdktrace.ReadOnlySpan
}

func (e *otlpExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped || len(spans) == 0 {
		return nil
	}
	// Group as the SDK's conversion does: by resource, then by scope, in order of arrival.
	for i := range e.groups {
		e.groups[i].spans = e.groups[i].spans[:0]
	}
	used := 0
	for _, s := range spans {
		if s == nil {
			continue
		}
		res, scope := s.Resource(), s.InstrumentationScope()
		i := 0
		for i < used && (!sameResource(e.groups[i].res, res) || e.groups[i].scope != scope) {
			i++
		}
		if i == used {
			if used == len(e.groups) {
				e.groups = append(e.groups, group{})
			}
			e.groups[used].res, e.groups[used].scope = res, scope
			used++
		}
		e.groups[i].spans = append(e.groups[i].spans, s)
	}
	// One ResourceSpans per resource, holding a ScopeSpans per scope.
	b := e.buf[:0]
	var bounds []int // start and end of each ResourceSpans' content in b
	done := make([]bool, used)
	for i := range used {
		if done[i] {
			continue
		}
		start := len(b)
		res := e.groups[i].res
		if res != nil {
			b = append(b, e.resource(res)...)
		}
		for j := i; j < used; j++ {
			if done[j] || !sameResource(e.groups[j].res, res) {
				continue
			}
			done[j] = true
			b = e.appendScopeSpans(b, &e.groups[j])
		}
		if res != nil && res.SchemaURL() != "" {
			b = protowire.AppendTag(b, 3, protowire.BytesType)
			b = protowire.AppendString(b, res.SchemaURL())
		}
		bounds = append(bounds, start, len(b))
	}
	e.buf = b
	e.msgs = e.msgs[:0]
	for k := 0; k < len(bounds); k += 2 {
		m := &tracepb.ResourceSpans{}
		m.ProtoReflect().SetUnknown(protoreflect.RawFields(b[bounds[k]:bounds[k+1]]))
		e.msgs = append(e.msgs, m)
	}
	for i := range e.groups {
		clear(e.groups[i].spans) // let the spans go
	}
	if err := e.client.UploadTraces(ctx, e.msgs); err != nil {
		return fmt.Errorf("traces export: %w", err)
	}
	return nil
}

func (e *otlpExporter) Shutdown(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped {
		return nil
	}
	e.stopped = true
	return e.client.Stop(ctx)
}

// sameResource is the SDK conversion's grouping: resources with equal attributes.
func sameResource(a, b *resource.Resource) bool {
	return a == b || a.Equivalent() == b.Equivalent()
}

// resource returns field 1 of ResourceSpans, the Resource, encoded once per resource.
func (e *otlpExporter) resource(r *resource.Resource) []byte {
	if enc, ok := e.resources[r]; ok {
		return enc
	}
	var b []byte
	m := beginMsg(&b, 1)
	for it := r.Iter(); it.Next(); {
		b = appendKeyValue(b, 1, it.Attribute())
	}
	endMsg(&b, m)
	if len(e.resources) < 16 { // a provider has one; bound it anyway
		e.resources[r] = b
	}
	return b
}

// appendScopeSpans appends field 2 of ResourceSpans: a ScopeSpans with g's spans.
func (e *otlpExporter) appendScopeSpans(b []byte, g *group) []byte {
	m := beginMsgSized(&b, 2, scopeLenBytes)
	if g.scope != (instrumentation.Scope{}) {
		enc, ok := e.scopes[g.scope]
		if !ok {
			enc = encodeScope(g.scope)
			if len(e.scopes) < 64 {
				e.scopes[g.scope] = enc
			}
		}
		b = append(b, enc...)
	}
	for _, s := range g.spans {
		b = appendSpan(b, s)
	}
	if g.scope.SchemaURL != "" {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, g.scope.SchemaURL)
	}
	endMsgSized(&b, m, scopeLenBytes)
	return b
}

// encodeScope is field 1 of ScopeSpans, the InstrumentationScope.
func encodeScope(s instrumentation.Scope) []byte {
	var b []byte
	m := beginMsg(&b, 1)
	b = appendString(b, 1, s.Name)
	b = appendString(b, 2, s.Version)
	for it := s.Attributes.Iter(); it.Next(); {
		b = appendKeyValue(b, 3, it.Attribute())
	}
	endMsg(&b, m)
	return b
}

// appendSpan appends field 2 of ScopeSpans: one Span.
func appendSpan(b []byte, s sdktrace.ReadOnlySpan) []byte {
	m := beginMsgSized(&b, 2, spanLenBytes)
	sc := s.SpanContext()
	tid, sid := sc.TraceID(), sc.SpanID()
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, tid[:])
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, sid[:])
	b = appendString(b, 3, sc.TraceState().String())
	parent := s.Parent()
	if psid := parent.SpanID(); psid.IsValid() {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendBytes(b, psid[:])
	}
	b = appendString(b, 5, s.Name())
	b = appendVarint(b, 6, uint64(spanKind(s.SpanKind())))
	b = appendFixed64(b, 7, unixNano(s.StartTime().UnixNano()))
	b = appendFixed64(b, 8, unixNano(s.EndTime().UnixNano()))
	for _, kv := range s.Attributes() {
		b = appendKeyValue(b, 9, kv)
	}
	b = appendVarint(b, 10, clampUint32(s.DroppedAttributes()))
	for _, ev := range s.Events() {
		em := beginMsg(&b, 11)
		b = appendFixed64(b, 1, unixNano(ev.Time.UnixNano()))
		b = appendString(b, 2, ev.Name)
		for _, kv := range ev.Attributes {
			b = appendKeyValue(b, 3, kv)
		}
		b = appendVarint(b, 4, clampUint32(ev.DroppedAttributeCount))
		endMsg(&b, em)
	}
	b = appendVarint(b, 12, clampUint32(s.DroppedEvents()))
	for _, l := range s.Links() {
		lm := beginMsg(&b, 13)
		ltid, lsid := l.SpanContext.TraceID(), l.SpanContext.SpanID()
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, ltid[:])
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, lsid[:])
		// No trace_state: the SDK's conversion leaves it out of links too.
		for _, kv := range l.Attributes {
			b = appendKeyValue(b, 4, kv)
		}
		b = appendVarint(b, 5, clampUint32(l.DroppedAttributeCount))
		b = appendFixed32(b, 6, spanFlags(l.SpanContext.TraceFlags(), l.SpanContext))
		endMsg(&b, lm)
	}
	b = appendVarint(b, 14, clampUint32(s.DroppedLinks()))
	st := s.Status()
	stm := beginMsg(&b, 15)
	b = appendString(b, 2, st.Description)
	b = appendVarint(b, 3, uint64(statusCode(st.Code)))
	endMsg(&b, stm)
	b = appendFixed32(b, 16, spanFlags(sc.TraceFlags(), parent))
	endMsgSized(&b, m, spanLenBytes)
	return b
}

// appendKeyValue appends field num: a KeyValue. Strings, integers and booleans (all the
// gate's attributes) are written with their lengths computed first, which is about twice
// as fast as reserving a length byte and fixing it up after; other values go through
// appendValue.
func appendKeyValue(b []byte, num protowire.Number, kv attribute.KeyValue) []byte {
	var vsize int // the AnyValue's content: one tag byte and the value
	switch kv.Value.Type() {
	case attribute.STRING:
		vsize = 1 + protowire.SizeBytes(len(kv.Value.AsString()))
	case attribute.INT64:
		vsize = 1 + protowire.SizeVarint(uint64(kv.Value.AsInt64()))
	case attribute.BOOL:
		vsize = 2
	default:
		return appendAnyKeyValue(b, num, kv)
	}
	size := 1 + protowire.SizeBytes(vsize) // field 2, the AnyValue
	if kv.Key != "" {
		size += 1 + protowire.SizeBytes(len(kv.Key)) // field 1
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(size))
	if kv.Key != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, string(kv.Key))
	}
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(vsize))
	switch kv.Value.Type() {
	case attribute.STRING:
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, kv.Value.AsString())
	case attribute.INT64:
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(kv.Value.AsInt64()))
	default: // BOOL
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, protowire.EncodeBool(kv.Value.AsBool()))
	}
	return b
}

// appendAnyKeyValue is appendKeyValue for any value.
func appendAnyKeyValue(b []byte, num protowire.Number, kv attribute.KeyValue) []byte {
	m := beginMsg(&b, num)
	b = appendString(b, 1, string(kv.Key))
	b = appendValue(b, 2, kv.Value)
	endMsg(&b, m)
	return b
}

// appendValue appends field num: an AnyValue, as the SDK's conversion makes it (always
// present; empty for attribute.EMPTY; the string "INVALID" for a type it does not know).
func appendValue(b []byte, num protowire.Number, v attribute.Value) []byte {
	m := beginMsg(&b, num)
	switch v.Type() {
	case attribute.BOOL:
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, protowire.EncodeBool(v.AsBool()))
	case attribute.INT64:
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(v.AsInt64()))
	case attribute.FLOAT64:
		b = protowire.AppendTag(b, 4, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.Float64bits(v.AsFloat64()))
	case attribute.STRING:
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, v.AsString())
	case attribute.BYTESLICE:
		b = protowire.AppendTag(b, 7, protowire.BytesType)
		b = protowire.AppendBytes(b, v.AsByteSlice())
	case attribute.BOOLSLICE, attribute.INT64SLICE, attribute.FLOAT64SLICE, attribute.STRINGSLICE, attribute.SLICE:
		am := beginMsg(&b, 5) // ArrayValue
		switch v.Type() {
		case attribute.BOOLSLICE:
			b = appendValues(b, v.AsBoolSlice(), attribute.BoolValue)
		case attribute.INT64SLICE:
			b = appendValues(b, v.AsInt64Slice(), attribute.Int64Value)
		case attribute.FLOAT64SLICE:
			b = appendValues(b, v.AsFloat64Slice(), attribute.Float64Value)
		case attribute.STRINGSLICE:
			b = appendValues(b, v.AsStringSlice(), attribute.StringValue)
		default:
			b = appendValues(b, v.AsSlice(), func(x attribute.Value) attribute.Value { return x })
		}
		endMsg(&b, am)
	case attribute.MAP:
		km := beginMsg(&b, 6) // KeyValueList
		for _, kv := range v.AsMap() {
			b = appendKeyValue(b, 1, kv)
		}
		endMsg(&b, km)
	case attribute.EMPTY:
	default:
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, "INVALID")
	}
	endMsg(&b, m)
	return b
}

// appendValues appends the values of an ArrayValue (field 1, repeated).
func appendValues[T any](b []byte, xs []T, value func(T) attribute.Value) []byte {
	for _, x := range xs {
		b = appendValue(b, 1, value(x))
	}
	return b
}

// beginMsg starts field num, a length-delimited message whose content follows; endMsg
// writes its length. One byte is reserved for the length, enough below 128 bytes; a longer
// message is moved to make room.
func beginMsg(b *[]byte, num protowire.Number) int { return beginMsgSized(b, num, 1) }

func endMsg(b *[]byte, start int) { endMsgSized(b, start, 1) }

// Bytes reserved for the length of the messages that are usually longer: a span (2: up to
// 16 KiB) and the ScopeSpans of a batch (3: up to 2 MiB). A length of another size moves the
// content: a span's content moved on every span was a tenth of the export's CPU.
const (
	spanLenBytes  = 2
	scopeLenBytes = 3
)

// beginMsgSized is beginMsg with reserved bytes for the length; endMsgSized, given the same
// reserved, writes it.
func beginMsgSized(b *[]byte, num protowire.Number, reserved int) int {
	*b = protowire.AppendTag(*b, num, protowire.BytesType)
	for range reserved {
		*b = append(*b, 0)
	}
	return len(*b)
}

func endMsgSized(b *[]byte, start, reserved int) {
	n := len(*b) - start
	if reserved == 1 && n < 0x80 {
		(*b)[start-1] = byte(n)
		return
	}
	switch size := protowire.SizeVarint(uint64(n)); {
	case size > reserved: // make room
		for range size - reserved {
			*b = append(*b, 0)
		}
		copy((*b)[start+size-reserved:], (*b)[start:start+n])
	case size < reserved: // close the gap
		copy((*b)[start-reserved+size:], (*b)[start:start+n])
		*b = (*b)[:len(*b)-(reserved-size)]
	}
	protowire.AppendVarint((*b)[:start-reserved], uint64(n))
}

// The appenders of scalar fields omit zero values, as proto3 does.

func appendString(b []byte, num protowire.Number, s string) []byte {
	return appendNonZero(b, num, protowire.BytesType, s, protowire.AppendString)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	return appendNonZero(b, num, protowire.VarintType, v, protowire.AppendVarint)
}

func appendFixed64(b []byte, num protowire.Number, v uint64) []byte {
	return appendNonZero(b, num, protowire.Fixed64Type, v, protowire.AppendFixed64)
}

func appendFixed32(b []byte, num protowire.Number, v uint32) []byte {
	return appendNonZero(b, num, protowire.Fixed32Type, v, protowire.AppendFixed32)
}

func appendNonZero[T comparable](b []byte, num protowire.Number, typ protowire.Type, v T, appendValue func([]byte, T) []byte) []byte {
	var zero T
	if v == zero {
		return b
	}
	return appendValue(protowire.AppendTag(b, num, typ), v)
}

func unixNano(n int64) uint64 { return uint64(max(0, n)) } //nolint:gosec // not negative

func clampUint32(v int) uint64 {
	return uint64(min(max(v, 0), math.MaxUint32)) //nolint:gosec // clamped
}

// spanFlags are the trace flags and whether the parent (or linked span) is remote.
func spanFlags(tf trace.TraceFlags, parent trace.SpanContext) uint32 {
	flags := uint32(tf) | uint32(tracepb.SpanFlags_SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)
	if parent.IsRemote() {
		flags |= uint32(tracepb.SpanFlags_SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK)
	}
	return flags
}

func spanKind(k trace.SpanKind) tracepb.Span_SpanKind {
	switch k {
	case trace.SpanKindInternal:
		return tracepb.Span_SPAN_KIND_INTERNAL
	case trace.SpanKindClient:
		return tracepb.Span_SPAN_KIND_CLIENT
	case trace.SpanKindServer:
		return tracepb.Span_SPAN_KIND_SERVER
	case trace.SpanKindProducer:
		return tracepb.Span_SPAN_KIND_PRODUCER
	case trace.SpanKindConsumer:
		return tracepb.Span_SPAN_KIND_CONSUMER
	}
	return tracepb.Span_SPAN_KIND_UNSPECIFIED
}

func statusCode(c codes.Code) tracepb.Status_StatusCode {
	switch c {
	case codes.Ok:
		return tracepb.Status_STATUS_CODE_OK
	case codes.Error:
		return tracepb.Status_STATUS_CODE_ERROR
	}
	return tracepb.Status_STATUS_CODE_UNSET
}
