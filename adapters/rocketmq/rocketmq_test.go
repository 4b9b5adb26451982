package rocketmq

// Unit tests without a broker: message mapping, the log bridge, and the callback bridge
// driven directly with client contexts and a fake consumer. The real client and broker are
// covered by e2e_test.go.

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/settings"
)

func testMsg(props map[string]string, body string) *primitive.MessageExt {
	m := &primitive.MessageExt{
		Message: primitive.Message{Topic: "orders", Body: []byte(body),
			Queue: &primitive.MessageQueue{Topic: "orders", BrokerName: "broker-a", QueueId: 3}},
		OffsetMsgId:   "7F00000100002A9F0000000000001234",
		QueueOffset:   42,
		BornTimestamp: 1700000000123,
	}
	m.WithProperties(props)
	return m
}

func TestMessageID(t *testing.T) {
	m := testMsg(map[string]string{"UNIQ_KEY": "U1", "KEYS": "k1 k2", "biz-id": "B1"}, "x")
	retry := testMsg(map[string]string{"ORIGIN_MESSAGE_ID": "O1"}, "x")
	bare := testMsg(map[string]string{}, "x")
	for _, tc := range []struct {
		rule string
		m    *primitive.MessageExt
		want string
	}{
		{"uniq_key", m, "U1"},
		{"", m, "U1"},
		{"keys", m, "k1"},
		{"property:biz-id", m, "B1"},
		{"property:missing", m, "U1"},
		{"keys", retry, "O1"},
		{"uniq_key", bare, "7F00000100002A9F0000000000001234"},
	} {
		if got := messageID(tc.rule, tc.m); got != tc.want {
			t.Errorf("messageID(%q) = %q, want %q", tc.rule, got, tc.want)
		}
	}
	if _, _, err := parseMessageID("header:x"); err == nil {
		t.Error("parseMessageID(header:x) = nil error")
	}
}

func TestDeliveryFields(t *testing.T) {
	s := newSource(Settings{Topic: "orders", Group: "g", MessageID: "uniq_key", Mode: "orderly", Namespace: "ns"},
		"", options{log: slog.Default()})
	m := testMsg(map[string]string{
		"UNIQ_KEY": "U1", "KEYS": "k1", "TAGS": "t", "RECONSUME_TIME": "2", "__RMQ.TRANSIENT.X": "1",
		"traceparent": "00-abc-def-01", "Content-Type": "application/json", "b": "2", "a": "1",
	}, "hello")
	m.Topic = "ns%orders"
	m.ReconsumeTimes = 2
	d := s.delivery(m)
	if d.ID != "U1" || string(d.Payload) != "hello" || d.Source != "rocketmq://orders" || d.Key != "k1" {
		t.Fatalf("delivery = %+v", d)
	}
	if d.Lane != "orders/broker-a/3" || !d.HasCoordinates || d.Partition != 3 || d.Offset != 42 {
		t.Errorf("lane/coordinates = %q %v %d %d", d.Lane, d.HasCoordinates, d.Partition, d.Offset)
	}
	if d.DeliveryCount != 2 || !d.Redelivered || d.ContentType != "application/json" {
		t.Errorf("count %d redelivered %v content type %q", d.DeliveryCount, d.Redelivered, d.ContentType)
	}
	if !d.Time.Equal(time.UnixMilli(1700000000123)) {
		t.Errorf("Time = %v", d.Time)
	}
	var keys []string
	for _, h := range d.Headers {
		keys = append(keys, h.Key)
	}
	if got := strings.Join(keys, ","); got != "Content-Type,a,b,traceparent" {
		t.Errorf("headers = %s (system properties must be left out, order sorted)", got)
	}
}

func TestDeadLetterMessage(t *testing.T) {
	s := newSource(Settings{Topic: "orders", Group: "g"}, "orders-dlq", options{log: slog.Default()})
	m := testMsg(map[string]string{"UNIQ_KEY": "U1", "KEYS": "k1", "TAGS": "t", "DELAY": "3", "x-h": "v\x01w"}, "body")
	d := s.delivery(m)
	f := adapters.Failure{Reason: "permanent", Status: 422, Error: "", Attempts: 3, Time: time.Unix(0, 0)}
	msg := s.deadLetterMessage(d, m, f)
	if msg.Topic != "orders-dlq" || string(msg.Body) != "body" {
		t.Fatalf("dead letter = %s", msg)
	}
	props := msg.GetProperties()
	for k, v := range map[string]string{
		"UNIQ_KEY": "U1", "KEYS": "k1", "TAGS": "t", "x-h": "v w", "mqsidecar-dlq-reason": "permanent",
		"mqsidecar-dlq-status": "422", "mqsidecar-dlq-id": "U1", "mqsidecar-dlq-offset": "42",
		"mqsidecar-dlq-group": "g", "mqsidecar-dlq-broker": "broker-a",
	} {
		if props[k] != v {
			t.Errorf("property %s = %q, want %q", k, props[k], v)
		}
	}
	if _, ok := props["DELAY"]; ok {
		t.Error("system property DELAY copied to the dead letter")
	}
	if _, ok := props["mqsidecar-dlq-error"]; ok {
		t.Error("empty property kept")
	}
}

func TestLogBridge(t *testing.T) {
	var buf bytes.Buffer
	installLogBridge(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	defer installLogBridge(slog.Default())
	b := logBridge{}
	b.Info("client internals", nil)
	b.Warning("consumeMessageCurrently time out", map[string]interface{}{"messages": []int{1, 2}})
	b.Warning("queryTopicRouteInfoFromServer return nil", map[string]interface{}{"topic": "%RETRY%g"})
	b.Warning("pull message from broker error", map[string]interface{}{
		"underlayError": errors.New("connection refused"), "messages": []*primitive.MessageExt{testMsg(nil, "SECRET BODY")},
	})
	out := buf.String()
	if strings.Contains(out, "client internals") || strings.Contains(out, "time out") || strings.Contains(out, "RETRY") {
		t.Errorf("debug-level client lines leaked at info:\n%s", out)
	}
	if !strings.Contains(out, "pull message from broker error") || !strings.Contains(out, "messages_count=1") {
		t.Errorf("warning missing or fields not reduced:\n%s", out)
	}
	if strings.Contains(out, "SECRET BODY") {
		t.Errorf("message body logged:\n%s", out)
	}
	if when, msg := lastPullError(); time.Since(when) > time.Minute || !strings.Contains(msg, "connection refused") {
		t.Errorf("lastPullError = %v %q", when, msg)
	}
}

// fakeConsumer records Shutdown and Suspend.
type fakeConsumer struct {
	mu       sync.Mutex
	shutdown bool
}

func (f *fakeConsumer) Start() error { return nil }
func (f *fakeConsumer) Shutdown() error {
	f.mu.Lock()
	f.shutdown = true
	f.mu.Unlock()
	return nil
}
func (f *fakeConsumer) Suspend()                           {}
func (f *fakeConsumer) GetOffsetDiffMap() map[string]int64 { return nil }

func bridgeSource(mode, dlMode string) *Source {
	s := newSource(Settings{Topic: "orders", Group: "g", Mode: mode, DeadLetterMode: dlMode, SuspendTime: 700 * time.Millisecond},
		"", options{log: slog.Default()})
	s.consumer = &fakeConsumer{}
	s.setReady(nil)
	go s.health(context.Background()) // as Run does once the consumer started
	return s
}

type verdict struct {
	res     consumer.ConsumeResult
	delay   int // concurrent: DelayLevelWhenNextConsume
	suspend int // orderly: SuspendCurrentQueueTimeMillis
}

// call runs the callback as the client would, returning its verdict on a channel.
func call(s *Source, m *primitive.MessageExt) <-chan verdict {
	ch := make(chan verdict, 1)
	go func() {
		cctx := primitive.NewConsumeConcurrentlyContext()
		octx := primitive.NewConsumeOrderlyContext()
		ctx := primitive.WithOrderlyCtx(primitive.WithConcurrentlyCtx(context.Background(), cctx), octx)
		res, _ := s.consume(ctx, m)
		ch <- verdict{res, cctx.DelayLevelWhenNextConsume, octx.SuspendCurrentQueueTimeMillis}
	}()
	return ch
}

func readOne(t *testing.T, s *Source) *adapters.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := s.Read(ctx)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return d
}

func wait(t *testing.T, ch <-chan verdict) verdict {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("callback did not return")
		return verdict{}
	}
}

func TestBridgeVerdicts(t *testing.T) {
	t.Run("concurrent", func(t *testing.T) {
		s := bridgeSource("concurrent", "topic")
		defer s.Close(context.Background())
		m := testMsg(map[string]string{"UNIQ_KEY": "a", "CONSUME_START_TIME": "1"}, "x")
		ch := call(s, m)
		d := readOne(t, s)
		if m.GetProperty("CONSUME_START_TIME") != "" {
			t.Error("CONSUME_START_TIME not removed (the client's expiry sweep would resend it)")
		}
		select {
		case <-ch:
			t.Fatal("callback returned before the delivery was settled")
		case <-time.After(50 * time.Millisecond):
		}
		d.Settle(nil)
		if v := wait(t, ch); v.res != consumer.ConsumeSuccess {
			t.Errorf("settled nil → %v, want ConsumeSuccess", v.res)
		}
		ch = call(s, testMsg(map[string]string{"UNIQ_KEY": "b"}, "x"))
		readOne(t, s).Settle(adapters.ErrNotDone)
		if v := wait(t, ch); v.res != consumer.ConsumeRetryLater || v.delay != 0 {
			t.Errorf("not done → %v delay %d, want ConsumeRetryLater delay 0", v.res, v.delay)
		}
	})
	t.Run("orderly", func(t *testing.T) {
		s := bridgeSource("orderly", "topic")
		defer s.Close(context.Background())
		ch := call(s, testMsg(map[string]string{"UNIQ_KEY": "a"}, "x"))
		readOne(t, s).Settle(errors.New("app down"))
		if v := wait(t, ch); v.res != consumer.SuspendCurrentQueueAMoment || v.suspend != 700 {
			t.Errorf("not done → %v suspend %d ms, want Suspend 700", v.res, v.suspend)
		}
	})
	t.Run("broker-dead-letter", func(t *testing.T) {
		for _, mode := range []string{"concurrent", "orderly"} {
			s := bridgeSource(mode, "broker")
			m := testMsg(map[string]string{"UNIQ_KEY": "a"}, "x")
			ch := call(s, m)
			d := readOne(t, s)
			if err := s.DeadLetter(context.Background(), d, adapters.Failure{Reason: "permanent"}); err != nil {
				t.Fatalf("%s: DeadLetter: %v", mode, err)
			}
			d.Settle(nil)
			v := wait(t, ch)
			if m.ReconsumeTimes <= maxReconsumeTimes {
				t.Errorf("%s: reconsume times %d not beyond the maximum", mode, m.ReconsumeTimes)
			}
			switch {
			case mode == "concurrent" && (v.res != consumer.ConsumeRetryLater || v.delay != -1):
				t.Errorf("concurrent dead letter → %v delay %d, want RetryLater -1", v.res, v.delay)
			case mode == "orderly" && v.res != consumer.SuspendCurrentQueueAMoment:
				t.Errorf("orderly dead letter → %v, want Suspend", v.res)
			}
			// The client hands a failed send-back to the callback again: same verdict, no
			// second hand-out.
			v2 := wait(t, call(s, m))
			if v2.res != v.res {
				t.Errorf("%s: repeated dead letter → %v, want %v", mode, v2.res, v.res)
			}
			if err := s.DeadLetter(context.Background(), d, adapters.Failure{}); !errors.Is(err, ErrUnknownDelivery) {
				t.Errorf("%s: DeadLetter after the callback returned = %v, want ErrUnknownDelivery", mode, err)
			}
			s.Close(context.Background())
		}
	})
	t.Run("no-target", func(t *testing.T) {
		s := bridgeSource("concurrent", "topic")
		defer s.Close(context.Background())
		if err := s.DeadLetter(context.Background(), &adapters.Delivery{ID: "x"}, adapters.Failure{}); !errors.Is(err, adapters.ErrNoDeadLetter) {
			t.Errorf("DeadLetter without target = %v, want ErrNoDeadLetter", err)
		}
	})
}

func TestBridgeClose(t *testing.T) {
	s := bridgeSource("concurrent", "topic")
	fc := s.consumer.(*fakeConsumer)
	done := call(s, testMsg(map[string]string{"UNIQ_KEY": "done"}, "x"))
	open := call(s, testMsg(map[string]string{"UNIQ_KEY": "open"}, "x"))
	d1, d2 := readOne(t, s), readOne(t, s)
	if d1.ID != "done" {
		d1, d2 = d2, d1
	}
	d1.Settle(nil)
	waiting := call(s, testMsg(map[string]string{"UNIQ_KEY": "never-handed-out"}, "x"))

	closed := make(chan error, 1)
	go func() { closed <- s.Close(context.Background()) }()
	if v := wait(t, done); v.res != consumer.ConsumeSuccess {
		t.Errorf("settled delivery → %v", v.res)
	}
	// Handed out, unsettled: not done, returned before the consumer's Shutdown (retry topic).
	if v := wait(t, open); v.res != consumer.ConsumeRetryLater {
		t.Errorf("unsettled at Close → %v, want RetryLater", v.res)
	}
	if !d2.Settled() {
		t.Error("Close did not settle the unsettled delivery")
	}
	d2.Settle(nil) // late: ignored
	// Never handed out: held until after Shutdown, so the client discards its verdict.
	v := wait(t, waiting)
	fc.mu.Lock()
	shut := fc.shutdown
	fc.mu.Unlock()
	if !shut {
		t.Error("a never-handed-out callback returned before the consumer's Shutdown")
	}
	if v.res != consumer.ConsumeRetryLater {
		t.Errorf("held callback → %v", v.res)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := s.Read(context.Background()); !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("Read after Close = %v", err)
	}
	if err := s.Close(context.Background()); !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
	if s.Ready() == nil {
		t.Error("Ready after Close = nil")
	}
	// A callback after Close returns at once.
	if v := wait(t, call(s, testMsg(nil, "x"))); v.res != consumer.ConsumeRetryLater {
		t.Errorf("callback after Close → %v", v.res)
	}
}

// TestCheck: New refuses settings that Check refuses (the rules config.Validate reports
// too), before it contacts anything.
func TestCheck(t *testing.T) {
	ok := Defaults()
	ok.Nameservers, ok.Group, ok.Topic = []string{"127.0.0.1:9876"}, "g", "t"
	var ck settings.Checker
	if ok.Check(&ck, ""); ck.Err("rocketmq") != nil {
		t.Fatalf("Check(valid) = %v", ck.Err("rocketmq"))
	}
	bad := ok
	bad.Nameservers = nil
	bad.Mode = "fifo"
	bad.DeadLetterMode = "broker"
	_, err := New(bad, "dlq")
	for _, want := range []string{"nameservers", "mode", "delivery.dead_letter.target"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New(bad) = %v, want it to mention %q", err, want)
		}
	}
}

// The byte budget reaches the client in its unit, whole MiB within its accepted range; the
// per-topic threshold replaces the fixed 32 MiB per queue, which let 8 queues cache 256 MiB.
func TestPullThresholdFromByteBudget(t *testing.T) {
	for _, c := range []struct {
		bytes int64
		want  int
	}{
		{0, 32}, {32 << 20, 32}, {64<<20 + 5, 64}, {1 << 20, 1}, {100, 1}, {1 << 40, 102400},
	} {
		if got := pullThresholdMiB(c.bytes); got != c.want {
			t.Errorf("pullThresholdMiB(%d) = %d, want %d", c.bytes, got, c.want)
		}
	}
}
