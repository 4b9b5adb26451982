package ackgate

// Traces (Options.Tracing): the gate records, for each admitted delivery, a consumer span
// "process <topic|queue>" from admission to settlement, whose parent is the message's own
// traceparent (the producer's trace continues) and whose attributes follow the OpenTelemetry
// messaging semantic conventions, plus the attempts and the outcome; and, for each push, a
// client span "POST" under it, whose context the push carries as traceparent (and
// tracestate) instead of the message's. The log lines of a delivery are logged with the
// consumer span's context, so a log handler (package tracing) can add its IDs.
//
// Off (Tracing.Provider nil) the hooks below return at their first line: no span, no
// context, no attribute is built, and the message's traceparent passes through unchanged.

import (
	"context"
	"strconv"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// Tracing configures the gate's spans.
type Tracing struct {
	// Provider records the spans; nil records none, at no cost.
	Provider trace.TracerProvider
	// Attributes are added to every consumer span: what the source knows and a delivery
	// does not carry (messaging.consumer.group.name, messaging.rocketmq.namespace, ...).
	Attributes []attribute.KeyValue
}

// Attribute keys of the gate's own, where the semantic conventions have none.
const (
	// AttrAttempts is the pushes of the message so far, those of earlier runs included
	// (the last ce-deliveryattempt), on the consumer span.
	AttrAttempts = attribute.Key("mqsidecar.delivery.attempts")
	// AttrOutcome is how the delivery was settled, on the consumer span: delivered,
	// duplicate, dead_lettered, dropped, or abandoned (left to the broker to redeliver).
	AttrOutcome = attribute.Key("mqsidecar.delivery.outcome")
	// AttrAttempt is the push's ce-deliveryattempt, on the push span.
	AttrAttempt = attribute.Key("mqsidecar.push.attempt")
	// AttrVerdict is the gate's reading of a failed push's answer (retry, permanent,
	// drop), on the push span; a push without it succeeded.
	AttrVerdict = attribute.Key("mqsidecar.push.verdict")
)

// tracer is the gate's side of Tracing; nil when tracing is off.
type tracer struct {
	t      trace.Tracer
	attrs  []attribute.KeyValue
	appURL attribute.KeyValue
	// bySrc caches, by CloudEvents source, what the consumer spans of a source share: their
	// name and first attributes. Used by the read loop only (startDelivery), so it needs no
	// lock.
	bySrc map[string]*sourceSpans
}

// sourceSpans is what the consumer spans of one source share.
type sourceSpans struct {
	name   string               // "process <topic|queue>"
	system string               // messaging.system
	attrs  []attribute.KeyValue // messaging.system, .operation.type, .destination.name
}

// The span kinds, as start options made once (an option made per span is an allocation).
var (
	consumerKind = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer)}
	clientKind   = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)}
)

// traceContext reads and writes the W3C traceparent and tracestate headers.
var traceContext propagation.TraceContext

func newTracer(opts Options) *tracer {
	if opts.Tracing.Provider == nil {
		return nil
	}
	return &tracer{
		t:      opts.Tracing.Provider.Tracer("github.com/mqsidecar/mqsidecar/ackgate"),
		attrs:  opts.Tracing.Attributes,
		appURL: semconv.URLFull(settings.RedactURL(opts.Push.URL)),
		bySrc:  map[string]*sourceSpans{},
	}
}

// source returns what the consumer spans of source share.
func (t *tracer) source(source string) *sourceSpans {
	if s, ok := t.bySrc[source]; ok {
		return s
	}
	system, dest := splitSource(source)
	s := &sourceSpans{name: "process " + dest, system: system, attrs: []attribute.KeyValue{
		semconv.MessagingSystemKey.String(system), semconv.MessagingOperationTypeProcess, semconv.MessagingDestinationName(dest),
	}}
	if len(t.bySrc) < 1024 { // a bound for sources that name anything
		t.bySrc[source] = s
	}
	return s
}

// itemTrace is an item's consumer span and the context its log lines and pushes descend
// from (context.Background() when tracing is off).
type itemTrace struct {
	ctx     context.Context
	span    trace.Span
	outcome string // set when completed (complete); settle derives the others
}

// startDelivery begins it's consumer span, a child of the message's traceparent. Its
// attributes are set when it ends (endDelivery), in one call: each call grows the span's
// attribute slice anew (none of the samplers OTEL_TRACES_SAMPLER offers reads attributes).
func (g *Gate) startDelivery(it *item) {
	it.trace.ctx = context.Background()
	if g.tracer == nil {
		return
	}
	parent := traceContext.Extract(context.Background(), headerCarrier(it.d.Headers))
	it.trace.ctx, it.trace.span = g.tracer.t.Start(parent, g.tracer.source(it.d.Source).name, consumerKind...)
}

// startPush begins the span of one push; the push carries the returned context's span as
// its traceparent. That context is the one Start made, under the delivery's, and is for
// that alone: the push is cancelled by the gate's own (a context per push would cost the
// connection a new cancellation watch each time, and an allocation). Off, it returns ctx
// and a nil span.
func (g *Gate) startPush(ctx context.Context, it *item) (context.Context, trace.Span) {
	if g.tracer == nil {
		return ctx, nil
	}
	return g.tracer.t.Start(it.trace.ctx, "POST", clientKind...)
}

// endPush ends a push span with its attributes and the app's answer.
func (g *Gate) endPush(span trace.Span, attempt int, res Result) {
	if span == nil {
		return
	}
	if !span.IsRecording() {
		span.End() // sampled out: its attributes would be dropped
		return
	}
	buf := getAttrs()
	attrs := append(*buf, semconv.HTTPRequestMethodPost, g.tracer.appURL, AttrAttempt.Int(attempt))
	if res.Status != 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(res.Status))
	}
	if res.Verdict != Success {
		errType := "transport"
		if res.Status != 0 {
			errType = strconv.Itoa(res.Status)
		}
		attrs = append(attrs, AttrVerdict.String(res.Verdict.String()), semconv.ErrorTypeKey.String(errType))
		span.SetStatus(codes.Error, errText(res.Err))
	}
	span.SetAttributes(attrs...)
	putAttrs(buf, attrs)
	span.End()
}

// endDelivery ends it's consumer span, with its attributes, as it is settled with err.
func (g *Gate) endDelivery(it *item, err error) {
	span := it.trace.span
	if span == nil {
		return
	}
	if !span.IsRecording() {
		span.End() // sampled out: its attributes would be dropped
		return
	}
	d := it.d
	src := g.tracer.source(d.Source)
	buf := getAttrs()
	attrs := append(*buf, src.attrs...)
	attrs = append(attrs, semconv.MessagingMessageID(d.ID))
	attrs = append(attrs, g.tracer.attrs...)
	if d.HasCoordinates {
		attrs = append(attrs, semconv.MessagingDestinationPartitionID(strconv.FormatInt(int64(d.Partition), 10)))
	}
	switch src.system {
	case "kafka":
		if d.HasCoordinates {
			attrs = append(attrs, semconv.MessagingKafkaOffset(int(d.Offset)))
		}
		if d.Key != "" {
			attrs = append(attrs, semconv.MessagingKafkaMessageKey(d.Key))
		}
	case "rocketmq":
		if d.Key != "" {
			attrs = append(attrs, semconv.MessagingRocketMQMessageKeys(strings.Fields(d.Key)...))
		}
	}
	outcome := it.trace.outcome
	switch {
	case err != nil:
		outcome = "abandoned"
	case outcome == "":
		outcome = "duplicate" // settled without a push: the store knew it as completed
	}
	attrs = append(attrs, AttrAttempts.Int(it.baseAttempt+it.pushes), AttrOutcome.String(outcome))
	if outcome == "dead_lettered" || outcome == "dropped" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(outcome))
		span.SetStatus(codes.Error, "not delivered: "+outcome)
	}
	span.SetAttributes(attrs...)
	putAttrs(buf, attrs)
	span.End()
}

// attrPool holds the slices the attributes of a span are gathered in before the one
// SetAttributes call, which copies them into the span's own (the SDK's recordingSpan
// keeps none of the caller's slice): one per span would be an allocation, and garbage, of
// up to a kilobyte per message.
var attrPool = sync.Pool{New: func() any { s := make([]attribute.KeyValue, 0, 16); return &s }}

func getAttrs() *[]attribute.KeyValue { return attrPool.Get().(*[]attribute.KeyValue) }

// putAttrs returns attrs, the slice gathered from buf's, to the pool as buf, emptied: it
// must not keep a message's ID alive.
func putAttrs(buf *[]attribute.KeyValue, attrs []attribute.KeyValue) {
	clear(attrs)
	*buf = attrs[:0]
	attrPool.Put(buf)
}

// String is the AttrOutcome value of a completion.
func (o outcome) String() string {
	switch o {
	case outcomeDelivered:
		return "delivered"
	case outcomeDeadLettered:
		return "dead_lettered"
	case outcomeDropped:
		return "dropped"
	}
	return "unknown"
}

// splitSource reads messaging.system and messaging.destination.name from a delivery's
// CloudEvents source: kafka://<topic>, rocketmq://<topic>, rabbitmq://<vhost>/<queue>.
func splitSource(src string) (system, dest string) {
	system, dest, ok := strings.Cut(src, "://")
	if !ok {
		return "", src
	}
	if system == "rabbitmq" {
		if _, q, ok := strings.Cut(dest, "/"); ok {
			dest = q
		}
	}
	return system, dest
}

// headerCarrier reads a message's headers as a propagation.TextMapCarrier (names compared
// case-insensitively; the first of repeated names wins).
type headerCarrier []adapters.Header

func (h headerCarrier) Get(key string) string {
	for _, kv := range h {
		if strings.EqualFold(kv.Key, key) {
			return kv.Value
		}
	}
	return ""
}

func (h headerCarrier) Set(string, string) {}

func (h headerCarrier) Keys() []string {
	keys := make([]string, len(h))
	for i, kv := range h {
		keys[i] = kv.Key
	}
	return keys
}

// lineCarrier writes the push span's traceparent and tracestate as header lines.
type lineCarrier func(k, v string)

func (l lineCarrier) Get(string) string { return "" }
func (l lineCarrier) Set(k, v string)   { l(k, v) }
func (l lineCarrier) Keys() []string    { return nil }

// isTraceHeader reports whether a message header is one the push span's context replaces.
func isTraceHeader(canonical string) bool {
	return canonical == "Traceparent" || canonical == "Tracestate"
}
