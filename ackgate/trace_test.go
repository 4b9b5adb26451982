package ackgate

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/mqsidecar/mqsidecar/adapters"
)

const (
	producerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	producerSpan  = "00f067aa0ba902b7"
)

// recorded returns the spans rec holds by kind.
func recorded(rec *tracetest.SpanRecorder) (consumer, client []sdktrace.ReadOnlySpan) {
	for _, s := range rec.Ended() {
		switch s.SpanKind() {
		case trace.SpanKindConsumer:
			consumer = append(consumer, s)
		case trace.SpanKindClient:
			client = append(client, s)
		}
	}
	return consumer, client
}

func attrOf(s sdktrace.ReadOnlySpan, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func wantAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want map[string]string) {
	t.Helper()
	for k, v := range want {
		got, ok := attrOf(s, k)
		if !ok || got.Emit() != v {
			t.Errorf("span %q: %s = %q (set %v), want %q", s.Name(), k, got.Emit(), ok, v)
		}
	}
}

// ctxLog records the span context each log record was logged with.
type ctxLog struct {
	mu   sync.Mutex
	recs map[string][]trace.SpanContext // message → span contexts
}

func (l *ctxLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *ctxLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *ctxLog) WithGroup(string) slog.Handler            { return l }
func (l *ctxLog) Handle(ctx context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs[r.Message] = append(l.recs[r.Message], trace.SpanContextFromContext(ctx))
	return nil
}

// TestTracesADeliveryRetriedOnce: a message carrying a producer's traceparent, whose first
// push fails, gets one consumer span (child of the producer's span, with the messaging
// attributes, 2 attempts, delivered) and two push spans under it; each push carries its own
// span's traceparent, not the message's; the retry's log line has the consumer span's
// context. A message without a traceparent starts a trace, and its push carries it too.
func TestTracesADeliveryRetriedOnce(t *testing.T) {
	a, url := newApp(t, func(id string, attempt int, w http.ResponseWriter) bool {
		if id == "traced" && attempt == 1 {
			w.WriteHeader(http.StatusInternalServerError)
			return true
		}
		return false
	})
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	logs := &ctxLog{recs: map[string][]trace.SpanContext{}}
	o := opts(url)
	o.Logger = slog.New(logs)
	o.Tracing = Tracing{Provider: tp, Attributes: []attribute.KeyValue{attribute.String("messaging.consumer.group.name", "g1")}}
	src := newFakeSource()
	start(t, src, openStore(t), o)
	parent := "00-" + producerTrace + "-" + producerSpan + "-01"
	src.sendWith(&adapters.Delivery{ID: "traced", Payload: []byte("x"), Source: "kafka://orders", Lane: "orders/3", Key: "k1",
		HasCoordinates: true, Partition: 3, Offset: 42,
		Headers: []adapters.Header{{Key: "traceparent", Value: parent}, {Key: "tracestate", Value: "vendor=1"}}})
	src.sendWith(&adapters.Delivery{ID: "untraced", Payload: []byte("y"), Source: "rabbitmq://%2F/jobs"})
	waitFor(t, "both settled and their spans ended", func() bool {
		c, p := recorded(rec)
		return src.settledCount() == 2 && len(c) == 2 && len(p) == 3
	})

	consumers, pushes := recorded(rec)
	spans := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range consumers {
		id, _ := attrOf(s, "messaging.message.id")
		spans[id.AsString()] = s
	}
	c := spans["traced"]
	if c == nil {
		t.Fatalf("no consumer span of traced: %v", consumers)
	}
	if c.Name() != "process orders" || c.SpanContext().TraceID().String() != producerTrace || c.Parent().SpanID().String() != producerSpan || !c.Parent().IsRemote() {
		t.Errorf("consumer span %q trace %s parent %s, want \"process orders\" in the producer's trace %s under %s",
			c.Name(), c.SpanContext().TraceID(), c.Parent().SpanID(), producerTrace, producerSpan)
	}
	wantAttrs(t, c, map[string]string{
		"messaging.system": "kafka", "messaging.destination.name": "orders", "messaging.operation.type": "process",
		"messaging.destination.partition.id": "3", "messaging.kafka.offset": "42", "messaging.kafka.message.key": "k1",
		"messaging.message.id": "traced", "messaging.consumer.group.name": "g1",
		"mqsidecar.delivery.attempts": "2", "mqsidecar.delivery.outcome": "delivered",
	})
	var mine []sdktrace.ReadOnlySpan
	for _, p := range pushes {
		if p.Parent().SpanID() == c.SpanContext().SpanID() {
			mine = append(mine, p)
		}
	}
	if len(mine) != 2 {
		t.Fatalf("%d push spans under the consumer span, want 2", len(mine))
	}
	wantAttrs(t, mine[0], map[string]string{"http.request.method": "POST", "http.response.status_code": "500", "mqsidecar.push.attempt": "1", "mqsidecar.push.verdict": "retry", "error.type": "500"})
	wantAttrs(t, mine[1], map[string]string{"http.response.status_code": "200", "mqsidecar.push.attempt": "2"})
	if mine[0].Status().Code != codes.Error || mine[1].Status().Code == codes.Error {
		t.Errorf("push statuses %v, %v; want an error, then none", mine[0].Status(), mine[1].Status())
	}
	hs := a.headers("traced")
	for i, h := range hs {
		want := "00-" + producerTrace + "-" + mine[i].SpanContext().SpanID().String() + "-01"
		if got := h.Values("Traceparent"); len(got) != 1 || got[0] != want {
			t.Errorf("push %d: traceparent %q, want the push span's %q (and not the message's)", i+1, got, want)
		}
		if got := h.Get("Tracestate"); got != "vendor=1" {
			t.Errorf("push %d: tracestate %q, want the message's vendor=1", i+1, got)
		}
	}

	u := spans["untraced"]
	if u == nil || u.Parent().IsValid() || u.Name() != "process jobs" {
		t.Fatalf("untraced: consumer span %v, want a root span \"process jobs\"", u)
	}
	wantAttrs(t, u, map[string]string{"messaging.system": "rabbitmq", "messaging.destination.name": "jobs", "mqsidecar.delivery.attempts": "1"})
	uh := a.headers("untraced")
	if len(uh) != 1 || !strings.HasPrefix(uh[0].Get("Traceparent"), "00-"+u.SpanContext().TraceID().String()+"-") {
		t.Errorf("untraced push: traceparent %q, want one of trace %s", uh[0].Get("Traceparent"), u.SpanContext().TraceID())
	}

	logs.mu.Lock()
	retried := logs.recs["push failed, retrying"]
	logs.mu.Unlock()
	if len(retried) != 1 || retried[0].SpanID() != c.SpanContext().SpanID() {
		t.Errorf("the retry's log line was logged with span contexts %v, want the consumer span's %s", retried, c.SpanContext().SpanID())
	}
}

// TestNoTracingForwardsTheMessagesTraceparent: without a provider nothing is recorded and
// the message's traceparent reaches the app as it was.
func TestNoTracingForwardsTheMessagesTraceparent(t *testing.T) {
	a, url := newApp(t, nil)
	src := newFakeSource()
	g, _ := start(t, src, openStore(t), opts(url))
	if g.tracer != nil || g.pusher.opts.TraceContext {
		t.Fatal("tracing on without a provider")
	}
	parent := "00-" + producerTrace + "-" + producerSpan + "-01"
	src.sendWith(&adapters.Delivery{ID: "m", Source: "kafka://orders", Headers: []adapters.Header{{Key: "traceparent", Value: parent}}})
	waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
	if got := a.headers("m")[0].Values("Traceparent"); len(got) != 1 || got[0] != parent {
		t.Fatalf("traceparent %q, want the message's %q", got, parent)
	}
}

// TestOutcomeOfADeadLetter: the consumer span of a dead-lettered message says so, as an
// error.
func TestOutcomeOfADeadLetter(t *testing.T) {
	_, url := newApp(t, func(_ string, _ int, w http.ResponseWriter) bool { w.WriteHeader(http.StatusBadRequest); return true })
	rec := tracetest.NewSpanRecorder()
	o := opts(url)
	o.DeadLetter = true
	o.Tracing = Tracing{Provider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))}
	src := newFakeSource()
	start(t, src, openStore(t), o)
	src.send("bad", "p0", "")
	waitFor(t, "settled", func() bool { c, _ := recorded(rec); return len(c) == 1 })
	c, _ := recorded(rec)
	wantAttrs(t, c[0], map[string]string{"mqsidecar.delivery.outcome": "dead_lettered", "mqsidecar.delivery.attempts": "1", "error.type": "dead_lettered"})
	if c[0].Status().Code != codes.Error {
		t.Errorf("status %v, want an error", c[0].Status())
	}
}
