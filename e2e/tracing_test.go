package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/mqsidecar/mqsidecar/internal/otlptest"
)

// TestKfakeTracing: the built binary with tracing.enabled exports, to an in-process OTLP/HTTP
// receiver, the spans of a delivery whose first push failed: one consumer span in the
// producer's trace (child of the producer's span from the message's traceparent), two push
// spans under it, each push carrying its own span's traceparent; the retry's log line
// carries the trace's ID. A message without a traceparent gets one (a new trace) in its push.
func TestKfakeTracing(t *testing.T) {
	const topic, group = "orders", "e2e-tracing"
	const producerTrace, producerSpan = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	brokers := newKfake(t, topic, 2)
	k := newKafkaEnv(t, "kfake", brokers, topic, group)
	rcv := otlptest.New(t)

	var mu sync.Mutex
	pushes := map[string][]http.Header{}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("ce-id")
		mu.Lock()
		pushes[id] = append(pushes[id], r.Header.Clone())
		n := len(pushes[id])
		mu.Unlock()
		if id == "traced" && n == 1 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(app.Close)
	pushesOf := func(id string) []http.Header {
		mu.Lock()
		defer mu.Unlock()
		return append([]http.Header(nil), pushes[id]...)
	}

	cfg := newSidecarConfig(t, "sidecar", kafkaConfig{
		brokers: brokers, topic: topic, group: group, appURL: app.URL + "/in",
		dedupPath: filepath.Join(t.TempDir(), "dedup.db"),
		extra:     fmt.Sprintf("tracing:\n  enabled: true\n  endpoint: %s\n", rcv.URL()),
	}.yaml(), "OTEL_BSP_SCHEDULE_DELAY=100", "MQSIDECAR_LOG_LEVEL=debug", "OTEL_SERVICE_NAME=orders-sidecar")
	p := cfg.start()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	traceparent := "00-" + producerTrace + "-" + producerSpan + "-01"
	if err := k.cl.ProduceSync(ctx,
		&kgo.Record{Value: []byte(`{"n":1}`), Partition: 0, Headers: []kgo.RecordHeader{
			{Key: "message-id", Value: []byte("traced")}, {Key: "traceparent", Value: []byte(traceparent)}}},
		&kgo.Record{Value: []byte(`{"n":2}`), Partition: 1, Headers: []kgo.RecordHeader{{Key: "message-id", Value: []byte("untraced")}}},
	).FirstErr(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "both delivered", func() (bool, string) {
		a, b := len(pushesOf("traced")), len(pushesOf("untraced"))
		return a == 2 && b == 1, fmt.Sprintf("traced pushed %d times (want 2), untraced %d (want 1)", a, b)
	}, func() string { return p.logTail(20) })
	// The consumer span ends when the delivery is settled (after the completion is durable).
	waitFor(t, 30*time.Second, "the spans of both deliveries exported", func() (bool, string) {
		n := 0
		for _, s := range rcv.Spans() {
			if s.Kind == tracepb.Span_SPAN_KIND_CONSUMER {
				n++
			}
		}
		return n == 2, fmt.Sprintf("%d consumer spans, %d spans in all; receiver errors %v", n, len(rcv.Spans()), rcv.Errors())
	}, func() string { return p.logTail(20) })
	p.Term(30 * time.Second)
	if errs := rcv.Errors(); len(errs) > 0 {
		t.Fatalf("the receiver refused exports: %v", errs)
	}

	spans := rcv.Spans()
	consumer := map[string]otlptest.Span{}
	for _, s := range spans {
		if s.Kind == tracepb.Span_SPAN_KIND_CONSUMER {
			if _, dup := consumer[s.Attrs["messaging.message.id"]]; dup {
				t.Errorf("two consumer spans of %s", s.Attrs["messaging.message.id"])
			}
			consumer[s.Attrs["messaging.message.id"]] = s
		}
	}
	c, ok := consumer["traced"]
	if !ok {
		t.Fatalf("no consumer span of the traced message among %+v", spans)
	}
	if c.TraceID != producerTrace || c.ParentSpanID != producerSpan || c.Name != "process orders" {
		t.Errorf("consumer span %q in trace %s under %s; want \"process orders\" in the producer's trace %s under %s", c.Name, c.TraceID, c.ParentSpanID, producerTrace, producerSpan)
	}
	for k, v := range map[string]string{
		"messaging.system": "kafka", "messaging.destination.name": topic, "messaging.destination.partition.id": "0",
		"messaging.kafka.offset": "0", "messaging.consumer.group.name": group, "messaging.operation.type": "process",
		"mqsidecar.delivery.attempts": "2", "mqsidecar.delivery.outcome": "delivered",
	} {
		if c.Attrs[k] != v {
			t.Errorf("consumer span: %s = %q, want %q", k, c.Attrs[k], v)
		}
	}
	if c.Resource["service.name"] != "orders-sidecar" {
		t.Errorf("service.name %q, want OTEL_SERVICE_NAME's orders-sidecar", c.Resource["service.name"])
	}
	var push []otlptest.Span
	for _, s := range spans {
		if s.Kind == tracepb.Span_SPAN_KIND_CLIENT && s.ParentSpanID == c.SpanID {
			push = append(push, s)
		}
	}
	if len(push) != 2 {
		t.Fatalf("%d push spans under the consumer span, want 2: %+v", len(push), push)
	}
	bySpan := map[string]otlptest.Span{}
	for _, s := range push {
		if s.TraceID != producerTrace {
			t.Errorf("push span in trace %s, want %s", s.TraceID, producerTrace)
		}
		bySpan[s.SpanID] = s
	}
	for i, h := range pushesOf("traced") {
		tp := strings.Split(h.Get("Traceparent"), "-")
		if len(tp) != 4 || tp[1] != producerTrace {
			t.Errorf("push %d: traceparent %q, want one of trace %s", i+1, h.Get("Traceparent"), producerTrace)
			continue
		}
		s, ok := bySpan[tp[2]]
		if !ok || s.Attrs["mqsidecar.push.attempt"] != fmt.Sprint(i+1) {
			t.Errorf("push %d: traceparent %q names no push span of attempt %d (%+v)", i+1, h.Get("Traceparent"), i+1, push)
		}
	}
	want := map[string]string{"1": "500", "2": "204"}
	for _, s := range push {
		if s.Attrs["http.response.status_code"] != want[s.Attrs["mqsidecar.push.attempt"]] {
			t.Errorf("push span of attempt %s: status %s, want %s", s.Attrs["mqsidecar.push.attempt"], s.Attrs["http.response.status_code"], want[s.Attrs["mqsidecar.push.attempt"]])
		}
	}

	u, ok := consumer["untraced"]
	if !ok || u.ParentSpanID != "" {
		t.Fatalf("untraced: consumer span %+v, want a root span", u)
	}
	if tp := pushesOf("untraced")[0].Get("Traceparent"); !strings.HasPrefix(tp, "00-"+u.TraceID+"-") {
		t.Errorf("untraced push: traceparent %q, want one of the consumer span's trace %s", tp, u.TraceID)
	}

	// The retry's log line names the trace and the consumer span.
	found := false
	for _, line := range strings.Split(p.logText(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != "push failed, retrying" {
			continue
		}
		found = true
		if rec["trace_id"] != producerTrace || rec["span_id"] != c.SpanID {
			t.Errorf("retry log line: trace_id %v span_id %v, want %s %s", rec["trace_id"], rec["span_id"], producerTrace, c.SpanID)
		}
	}
	if !found {
		t.Errorf("no \"push failed, retrying\" log line at debug level:\n%s", p.logTail(30))
	}
}
