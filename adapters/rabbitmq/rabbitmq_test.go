package rabbitmq

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// logBuffer is a goroutine-safe log sink.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func testLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	t.Helper()
	b := &logBuffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// countingMetrics records events for assertions: the trace (Inc) and adapters.Events.
type countingMetrics struct {
	mu        sync.Mutex
	events    map[Event]int
	connected bool
}

func (m *countingMetrics) Inc(e Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.events == nil {
		m.events = map[Event]int{}
	}
	m.events[e]++
}

func (m *countingMetrics) SetSourceReady(up bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.connected = up
}

func (m *countingMetrics) count(e Event) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.events[e]
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func validConfig() Settings {
	c := Defaults()
	c.URL = "amqp://guest:guest@127.0.0.1:5672/"
	c.Queue = "orders"
	return c
}

func TestNewValidation(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Settings)
		target string
		want   string
	}{
		{"no url", func(c *Settings) { c.URL = "" }, "", "url: required"},
		{"bad scheme", func(c *Settings) { c.URL = "http://u:hunter2@h/" }, "", "url: must start with amqp:// or amqps://"},
		{"bad url", func(c *Settings) { c.URL = "amqp://u:hunter2@h:notaport/" }, "", "url: is not a valid URL"},
		{"no queue", func(c *Settings) { c.Queue = "" }, "", "queue: required"},
		{"prefetch 0", func(c *Settings) { c.Prefetch = 0 }, "", "prefetch: must be between 1 and 65535, got 0"},
		{"prefetch big", func(c *Settings) { c.Prefetch = 70000 }, "", "prefetch: must be between 1 and 65535"},
		{"message id", func(c *Settings) { c.MessageID = "key" }, "", "message_id: must be"},
		{"empty header", func(c *Settings) { c.MessageID = "header:" }, "", `message_id: "header:" names no header`},
		{"dl mode", func(c *Settings) { c.DeadLetterMode = "drop" }, "", "dead_letter_mode: must be"},
		{"dl target", func(c *Settings) {}, "/", "names neither an exchange nor a routing key"},
		{"dl space", func(c *Settings) {}, "dl x/k", "spaces or control characters"},
		{"tls needs amqps", func(c *Settings) { c.TLS.Enabled = true }, "", "TLS needs an amqps:// URL"},
		{"tls ca", func(c *Settings) {
			c.URL = "amqps://h/"
			c.TLS = settings.TLS{Enabled: true, CAFile: "/nonexistent/ca.pem"}
		}, "", "tls.ca_file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mutate(&c)
			s, err := New(c, tc.target)
			if err == nil {
				_ = s.Close(context.Background())
				t.Fatalf("New succeeded, want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error leaks the password: %q", err)
			}
		})
	}
}

func TestParseDeadLetter(t *testing.T) {
	cases := []struct {
		mode, target string
		want         deadLetterTarget
	}{
		{"publish", "", deadLetterTarget{mode: modeNone}},
		{"", "dlx", deadLetterTarget{mode: modePublish, exchange: "dlx", routingKey: "orders"}},
		{"publish", "dlx/orders.dead", deadLetterTarget{mode: modePublish, exchange: "dlx", routingKey: "orders.dead"}},
		{"publish", "dlx/", deadLetterTarget{mode: modePublish, exchange: "dlx", routingKey: ""}},
		{"publish", "/orders.dlq", deadLetterTarget{mode: modePublish, exchange: "", routingKey: "orders.dlq"}},
		{"publish", "dlx/a/b", deadLetterTarget{mode: modePublish, exchange: "dlx", routingKey: "a/b"}},
		{"nack", "", deadLetterTarget{mode: modeNack}},
		{"nack", "ignored", deadLetterTarget{mode: modeNack}},
	}
	for _, tc := range cases {
		got, err := parseDeadLetter(tc.mode, tc.target, "orders")
		if err != nil {
			t.Errorf("parseDeadLetter(%q, %q): %v", tc.mode, tc.target, err)
			continue
		}
		if got != tc.want {
			t.Errorf("parseDeadLetter(%q, %q) = %+v, want %+v", tc.mode, tc.target, got, tc.want)
		}
	}
}

func TestSourceAndLane(t *testing.T) {
	c := validConfig()
	c.URL = "amqp://guest:guest@127.0.0.1:1/"
	s, err := New(c, "")
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	defer s.Close(context.Background())
	if s.source != "rabbitmq://%2F/orders" || s.lane != "" {
		t.Errorf("source %q lane %q", s.source, s.lane)
	}
	c.URL = "amqp://guest:guest@127.0.0.1:1/prod"
	c.Prefetch = 1
	s2, err := New(c, "")
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s2.Run)
	defer s2.Close(context.Background())
	if s2.source != "rabbitmq://prod/orders" || s2.lane != s2.source {
		t.Errorf("source %q lane %q", s2.source, s2.lane)
	}
}

func TestConversion(t *testing.T) {
	ts := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	m := &amqp.Delivery{
		Headers: amqp.Table{
			"traceparent":      "00-abc-def-01",
			"x-delivery-count": int64(2),
			"n":                int32(-7),
			"f":                1.5,
			"ok":               true,
			"raw":              []byte{0xff, 0x00},
			"text":             []byte("hi"),
			"when":             ts,
			"dec":              amqp.Decimal{Scale: 2, Value: 12345},
			"nested":           amqp.Table{"a": int64(1), "b": []any{"x", int8(2)}},
			"nil":              nil,
		},
		ContentType:   "application/json",
		CorrelationId: "corr-1",
		MessageId:     "m-1",
		Priority:      3,
		Timestamp:     ts,
		Exchange:      "ex",
		RoutingKey:    "rk",
		Redelivered:   false,
		DeliveryTag:   9,
		Body:          []byte(`{"x":1}`),
	}
	c := validConfig()
	c.URL = "amqp://guest:guest@127.0.0.1:1/"
	s, err := New(c, "")
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	defer s.Close(context.Background())
	d := s.newDelivery(&session{s: s, accepting: false}, m)
	if d.ID != "m-1" || string(d.Payload) != `{"x":1}` || d.ContentType != "application/json" || d.Source != "rabbitmq://%2F/orders" {
		t.Errorf("delivery %+v", d)
	}
	if !d.Time.Equal(ts) || d.DeliveryCount != 2 || !d.Redelivered || d.HasCoordinates {
		t.Errorf("time %v count %d redelivered %v coords %v", d.Time, d.DeliveryCount, d.Redelivered, d.HasCoordinates)
	}
	want := map[string]string{
		"traceparent":         "00-abc-def-01",
		"x-delivery-count":    "2",
		"n":                   "-7",
		"f":                   "1.5",
		"ok":                  "true",
		"raw":                 "/wA=",
		"text":                "hi",
		"when":                "2024-05-06T07:08:09Z",
		"dec":                 "123.45",
		"nested":              `{"a":1,"b":["x",2]}`,
		"nil":                 "",
		"amqp-correlation-id": "corr-1",
		"amqp-message-id":     "m-1",
		"amqp-priority":       "3",
		"amqp-exchange":       "ex",
		"amqp-routing-key":    "rk",
	}
	got := map[string]string{}
	for i, h := range d.Headers {
		got[h.Key] = h.Value
		if i > 0 && i < len(m.Headers) && d.Headers[i-1].Key > h.Key {
			t.Errorf("application headers not sorted: %q before %q", d.Headers[i-1].Key, h.Key)
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("header %s = %q, want %q", k, got[k], v)
		}
	}
	if _, ok := got["amqp-reply-to"]; ok {
		t.Error("unset property forwarded")
	}
	// The session no longer accepts: a settlement is dropped, counted, and never panics.
	d.Settle(nil)
	d.Settle(nil)
	if _, ok := s.inflight.Load(d); ok {
		t.Error("settled delivery still in flight")
	}
}

func TestMessageID(t *testing.T) {
	log, logs := testLogger(t)
	metrics := &countingMetrics{}
	c := validConfig()
	c.URL = "amqp://guest:guest@127.0.0.1:1/"
	c.MessageID = "header:Message-Id"
	s, err := New(c, "", WithLogger(log), WithEvents(metrics), withTrace(metrics.Inc))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	defer s.Close(context.Background())

	if id := s.messageID(&amqp.Delivery{MessageId: "prop", Headers: amqp.Table{"message-id": "hdr"}}); id != "hdr" {
		t.Errorf("header id = %q", id)
	}
	if id := s.messageID(&amqp.Delivery{Headers: amqp.Table{"Message-Id": int64(42)}}); id != "42" {
		t.Errorf("numeric header id = %q", id)
	}
	a := s.messageID(&amqp.Delivery{MessageId: "prop-ignored", Body: []byte("same")})
	b := s.messageID(&amqp.Delivery{MessageId: "prop-ignored", Body: []byte("same")})
	if !strings.HasPrefix(a, "rabbitmq-generated:") || a == b {
		t.Errorf("generated ids %q, %q: want unique rabbitmq-generated:*", a, b)
	}
	if metrics.count(EventMissingID) != 2 {
		t.Errorf("missing id events = %d, want 2", metrics.count(EventMissingID))
	}
	if n := strings.Count(logs.String(), "message without an ID"); n != 1 {
		t.Errorf("missing-ID warning logged %d times, want 1 (rate limited)", n)
	}

	c.MessageID = "message_id"
	s2, err := New(c, "", WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s2.Run)
	defer s2.Close(context.Background())
	if id := s2.messageID(&amqp.Delivery{MessageId: "prop"}); id != "prop" {
		t.Errorf("property id = %q", id)
	}
}

// TestUnreachable: a broker that is not there → Ready explains, Read blocks and honours
// ctx, the password appears nowhere, Close is prompt and leaves no goroutine.
func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now

	base := runtime.NumGoroutine()
	log, logs := testLogger(t)
	c := validConfig()
	c.URL = settings.Secret("amqp://user:hunter2@" + addr + "/")
	s, err := New(c, "dlx", WithLogger(log), WithBackoff(10*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	eventually(t, 5*time.Second, "Ready reports the dial failure", func() bool {
		err := s.Ready()
		return err != nil && strings.Contains(err.Error(), "connect to "+addr)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := s.Read(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Read = %v, want DeadlineExceeded", err)
	}
	eventually(t, 5*time.Second, "a retry is logged", func() bool { return strings.Contains(logs.String(), "retrying") })
	for _, text := range []string{s.Ready().Error(), logs.String()} {
		if strings.Contains(text, "hunter2") {
			t.Fatalf("password leaked: %s", text)
		}
	}
	start := time.Now()
	if err := s.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("Close took %v", time.Since(start))
	}
	if _, err := s.Read(context.Background()); !errors.Is(err, adapters.ErrClosed) {
		t.Fatalf("Read after Close = %v", err)
	}
	if err := s.Close(context.Background()); !errors.Is(err, adapters.ErrClosed) {
		t.Fatalf("second Close = %v", err)
	}
	if err := s.Ready(); !errors.Is(err, adapters.ErrClosed) {
		t.Fatalf("Ready after Close = %v", err)
	}
	eventually(t, 5*time.Second, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= base })
}

// TestCloseDuringHandshake: a peer that accepts TCP but never speaks AMQP must not hold
// Close for the handshake timeout.
func TestCloseDuringHandshake(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	base := runtime.NumGoroutine()
	c := validConfig()
	c.URL = settings.Secret("amqp://guest:guest@" + ln.Addr().String() + "/")
	s, err := New(c, "")
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	var peer net.Conn
	select {
	case peer = <-accepted:
		defer peer.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("source did not dial")
	}
	start := time.Now()
	if err := s.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v during a stuck handshake", d)
	}
	eventually(t, 5*time.Second, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= base })
}

func TestDeadLetterWithoutTarget(t *testing.T) {
	c := validConfig()
	c.URL = "amqp://guest:guest@127.0.0.1:1/"
	s, err := New(c, "")
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	defer s.Close(context.Background())
	if err := s.DeadLetter(context.Background(), &adapters.Delivery{ID: "x"}, adapters.Failure{}); !errors.Is(err, adapters.ErrNoDeadLetter) {
		t.Fatalf("DeadLetter = %v, want ErrNoDeadLetter", err)
	}
	s2, err := New(c, "dlx")
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s2.Run)
	defer s2.Close(context.Background())
	if err := s2.DeadLetter(context.Background(), &adapters.Delivery{ID: "x"}, adapters.Failure{}); err == nil ||
		!strings.Contains(err.Error(), "not an unsettled delivery") {
		t.Fatalf("DeadLetter of a foreign delivery = %v", err)
	}
}

func TestBackoff(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: time.Second}
	prevMax := time.Duration(0)
	for i := range 10 {
		d := b.next()
		if d < b.cur/2 || d > b.cur {
			t.Fatalf("step %d: %v outside [%v, %v]", i, d, b.cur/2, b.cur)
		}
		if b.cur < prevMax || b.cur > time.Second {
			t.Fatalf("step %d: cur %v", i, b.cur)
		}
		prevMax = b.cur
	}
	b.reset()
	if d := b.next(); d > 100*time.Millisecond {
		t.Fatalf("after reset: %v", d)
	}
}

// TestAmbiguousURLRefused: a URL whose user info net/url would split in the wrong place
// ("#", "?" or "/" in the password, several "@") is refused by New, before anything is
// dialled or logged: accepted, it would dial the host "orders" and log the password as
// part of the vhost or address.
func TestAmbiguousURLRefused(t *testing.T) {
	const pw = "Tr0ub4dor"
	for _, u := range []string{
		"amqp://orders:#" + pw + "@rabbit:5672/",
		"amqp://orders:?" + pw + "@rabbit:5672/",
		"amqp://orders:/" + pw + "@rabbit:5672/",
		"amqp://orders:" + pw + "/x@rabbit:5672/",
		"amqp://orders:" + pw + "@x@rabbit:5672/",
		"amqp://orders:" + pw + "%zz@rabbit:5672/",
		"amqp://orders:" + pw + "@rabbit:port/",
	} {
		name := strings.ReplaceAll(u, pw, "PW")
		c := validConfig()
		c.URL = settings.Secret(u)
		log, logs := testLogger(t)
		s, err := New(c, "", WithLogger(log))
		if err == nil {
			_ = s.Close(context.Background())
			t.Errorf("%s: New accepted it (dialling %s)", name, s.addr)
			continue
		}
		if !strings.Contains(err.Error(), "url:") || !strings.Contains(err.Error(), "%23") {
			t.Errorf("%s: error does not name the url and how to encode: %v", name, err)
		}
		if strings.Contains(err.Error(), pw) || strings.Contains(logs.String(), pw) {
			t.Errorf("%s: password in the error or log: %v\n%s", name, err, logs)
		}
	}
}

// Error and SetConsumerLag complete adapters.Events; the trace counts the errors.
func (m *countingMetrics) Error(string)                    {}
func (m *countingMetrics) SetConsumerLag(map[string]int64) {}
