//go:build e2e

// End-to-end tests against a real RocketMQ (e2e/harness/rocketmq.sh start):
//
//	eval "$(e2e/harness/rocketmq.sh env)"
//	go test -tags e2e -count=1 ./adapters/rocketmq/
//
// Run them without -race in CI: the race detector reports data races inside the client
// (see the package doc: Shutdown vs in-flight requests and pulls, the expiry sweep, the
// orderly consumer) intermittently, which would make CI flaky for reasons outside this
// package. This package's own concurrency is race-checked by the unit tests (go test -race
// without the tag), which drive the callback bridge with a fake consumer. Orderly tests skip
// themselves under -race.
//
// MQSIDECAR_E2E_ROCKETMQ is the name server address; MQSIDECAR_E2E_ROCKETMQ_BROKER the
// broker address topics are created on (default: the name server's host, port 20911, the
// harness default). Without MQSIDECAR_E2E_ROCKETMQ the tests skip, or fail under CI=true.
package rocketmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/admin"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/adaptertest"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
)

// env returns the name server and broker addresses, skipping (or failing under CI).
func env(t *testing.T) (nameserver, broker string) {
	t.Helper()
	ns := os.Getenv("MQSIDECAR_E2E_ROCKETMQ")
	if ns == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("MQSIDECAR_E2E_ROCKETMQ is not set under CI=true: start RocketMQ with e2e/harness/rocketmq.sh start and eval its env output")
		}
		t.Skip("MQSIDECAR_E2E_ROCKETMQ not set (name server address); run e2e/harness/rocketmq.sh start and eval \"$(e2e/harness/rocketmq.sh env)\"")
	}
	broker = os.Getenv("MQSIDECAR_E2E_ROCKETMQ_BROKER")
	if broker == "" {
		host, _, err := net.SplitHostPort(ns)
		if err != nil {
			t.Fatalf("MQSIDECAR_E2E_ROCKETMQ=%q: %v", ns, err)
		}
		broker = net.JoinHostPort(host, "20911")
	}
	installLogBridge(testLogger(t))
	return ns, broker
}

var (
	adminOnce sync.Once
	adminCli  admin.Admin
	adminErr  error
	seq       atomic.Int64
)

func testLogger(t *testing.T) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("MQSIDECAR_E2E_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// createTopic creates topic on the broker and waits until the name server routes it
// (consumers and producers fail on a topic without a route).
func createTopic(t *testing.T, topic string, queues int) {
	t.Helper()
	ns, broker := env(t)
	adminOnce.Do(func() {
		adminCli, adminErr = admin.NewAdmin(admin.WithResolver(primitive.NewPassthroughResolver([]string{ns})))
	})
	if adminErr != nil {
		t.Fatalf("admin: %v", adminErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := adminCli.CreateTopic(ctx, admin.WithTopicCreate(topic), admin.WithBrokerAddrCreate(broker),
		admin.WithReadQueueNums(queues), admin.WithWriteQueueNums(queues)); err != nil {
		t.Fatalf("create topic %s on %s: %v", topic, broker, err)
	}
	waitRoute(t, ctx, topic)
}

func waitRoute(t *testing.T, ctx context.Context, topic string) {
	t.Helper()
	for {
		mqs, err := adminCli.FetchPublishMessageQueues(ctx, topic)
		if err == nil && len(mqs) > 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("topic %s has no route at the name server: %v", topic, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// skipOrderlyUnderRace skips under -race: the client's orderly consumer has a data race of
// its own (see raceEnabled); run these tests with go test -tags e2e without -race.
func skipOrderlyUnderRace(t *testing.T) {
	t.Helper()
	if raceEnabled {
		t.Skip("orderly mode: the rocketmq client's orderly consumer races on its process queue (takeMessages vs putMessage); run without -race")
	}
}

func newProducer(t *testing.T) rmq.Producer {
	t.Helper()
	ns, _ := env(t)
	p, err := rmq.NewProducer(
		producer.WithNsResolver(primitive.NewPassthroughResolver([]string{ns})),
		producer.WithGroupName(fmt.Sprintf("test-producer-%d", seq.Add(1))),
		producer.WithInstanceName(fmt.Sprintf("test-producer-%d-%d", os.Getpid(), seq.Add(1))),
		producer.WithQueueSelector(producer.NewHashQueueSelector()),
		producer.WithRetry(2),
	)
	if err != nil {
		t.Fatalf("producer: %v", err)
	}
	if err := p.Start(); err != nil {
		t.Fatalf("producer start: %v", err)
	}
	t.Cleanup(func() { _ = p.Shutdown() })
	return p
}

// produce sends msgs in order; Message.ID becomes UNIQ_KEY, Message.Key KEYS and the
// sharding key (same key, same queue).
func produce(t *testing.T, p rmq.Producer, topic string, msgs ...adaptertest.Message) {
	t.Helper()
	for _, m := range msgs {
		msg := primitive.NewMessage(topic, m.Payload)
		msg.WithProperty(primitive.PropertyUniqueClientMessageIdKeyIndex, m.ID)
		if m.Key != "" {
			msg.WithKeys([]string{m.Key})
			msg.WithShardingKey(m.Key)
		}
		for _, h := range m.Headers {
			msg.WithProperty(h.Key, h.Value)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		res, err := p.SendSync(ctx, msg)
		cancel()
		if err != nil {
			t.Fatalf("produce %s to %s: %v", m.ID, topic, err)
		}
		if res.Status != primitive.SendOK {
			t.Fatalf("produce %s to %s: status %d", m.ID, topic, res.Status)
		}
	}
}

// readTopic consumes topic from the start with a fresh group until n messages arrived.
func readTopic(t *testing.T, topic string, n int, timeout time.Duration) []adaptertest.Message {
	t.Helper()
	return readTopicUntil(t, topic, func(got []adaptertest.Message) bool { return len(got) >= n }, timeout)
}

// readTopicUntil reads topic from its first offset with a new group until done says so
// or timeout.
func readTopicUntil(t *testing.T, topic string, done func([]adaptertest.Message) bool, timeout time.Duration) []adaptertest.Message {
	t.Helper()
	ns, _ := env(t)
	var mu sync.Mutex
	var got []adaptertest.Message
	c, err := rmq.NewPushConsumer(
		consumer.WithNsResolver(primitive.NewPassthroughResolver([]string{ns})),
		consumer.WithGroupName(fmt.Sprintf("test-reader-%d", seq.Add(1))),
		consumer.WithInstance(fmt.Sprintf("test-reader-%d-%d", os.Getpid(), seq.Add(1))),
		consumer.WithConsumeFromWhere(consumer.ConsumeFromFirstOffset),
	)
	if err != nil {
		t.Fatalf("reader: %v", err)
	}
	err = c.Subscribe(topic, consumer.MessageSelector{}, func(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			var hs []adapters.Header
			for k, v := range m.GetProperties() {
				hs = append(hs, adapters.Header{Key: k, Value: v})
			}
			got = append(got, adaptertest.Message{
				ID: m.GetProperty(primitive.PropertyUniqueClientMessageIdKeyIndex), Payload: m.Body, Headers: hs,
			})
		}
		return consumer.ConsumeSuccess, nil
	})
	if err != nil {
		t.Fatalf("reader subscribe: %v", err)
	}
	if err := c.Start(); err != nil {
		t.Fatalf("reader start on %s: %v", topic, err)
	}
	defer func() { _ = c.Shutdown() }()
	deadline := time.Now().Add(timeout)
	for {
		mu.Lock()
		ok := done(got)
		mu.Unlock()
		if ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]adaptertest.Message(nil), got...)
}

func sourceConfig(t *testing.T, topic, mode, dlMode string) Settings {
	ns, _ := env(t)
	return Settings{
		Nameservers:    []string{ns},
		Group:          "g-" + topic,
		Topic:          topic,
		Tags:           "*",
		MessageID:      "uniq_key",
		Mode:           mode,
		DeadLetterMode: dlMode,
		SuspendTime:    300 * time.Millisecond,
	}
}

func open(t *testing.T, cfg Settings, dl string) *Source {
	t.Helper()
	return openWith(t, cfg, dl, nil)
}

// openWith is open with before applied to the Source before it runs (nil: nothing).
func openWith(t *testing.T, cfg Settings, dl string, before func(*Source)) *Source {
	t.Helper()
	s, err := New(cfg, dl, WithLogger(testLogger(t)), WithMaxInflight(16))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if before != nil {
		before(s)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = s.Close(ctx)
	})
	lifecycletest.Start(t, s.Run)
	return s
}

func closeSource(t *testing.T, s *Source) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func read(t *testing.T, s *Source, timeout time.Duration) *adapters.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d, err := s.Read(ctx)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return d
}

func msgs(prefix string, n int, key string) []adaptertest.Message {
	out := make([]adaptertest.Message, n)
	tag := fmt.Sprintf("%d", time.Now().UnixNano()%1e9)
	for i := range out {
		id := fmt.Sprintf("%s-%s-%03d", prefix, tag, i)
		out[i] = adaptertest.Message{ID: id, Payload: []byte("payload " + id), Key: key}
	}
	return out
}

func TestConformance(t *testing.T) {
	env(t)
	// One producer for every case (a client start each would be slow); owned by the parent.
	p := newProducer(t)
	base := adaptertest.Features{
		DeadLetter: true,
		Keys:       true,
		// Redeliveries through the retry topic carry DeliveryCount, but a message
		// redelivered from its queue after a crash carries no hint (RocketMQ keeps no
		// per-message delivery count), so the suite's check does not apply; the hint is
		// tested in TestNotDoneRedeliveredWithCount.
		Redelivered:  false,
		Timeout:      45 * time.Second,
		CloseTimeout: 15 * time.Second,
	}
	concurrent := base
	concurrent.SelectiveAck = true
	// Orderly: one message per queue at a time (batch size 1, see the package doc).
	orderly := base
	orderly.Ordered = true
	orderly.MaxUnsettled = 1
	for _, tc := range []struct {
		mode string
		f    adaptertest.Features
	}{{"concurrent", concurrent}, {"orderly", orderly}} {
		t.Run(tc.mode, func(t *testing.T) {
			if tc.mode == "orderly" {
				skipOrderlyUnderRace(t)
			}
			adaptertest.Run(t, adaptertest.Harness{
				Name:     "rocketmq-" + tc.mode,
				Features: tc.f,
				Setup: func(t *testing.T, dest string) string {
					createTopic(t, dest, 4)
					createTopic(t, dest+"-dlq", 1)
					return dest + "-dlq"
				},
				NewSource: func(t *testing.T, dest, dl string) adapters.Source {
					s, err := New(sourceConfig(t, dest, tc.mode, "topic"), dl, WithLogger(testLogger(t)), WithMaxInflight(16))
					if err != nil {
						t.Fatalf("New: %v", err)
					}
					return s
				},
				Produce: func(t *testing.T, dest string, ms ...adaptertest.Message) {
					produce(t, p, dest, ms...)
				},
				ReadDeadLetters: func(t *testing.T, dl string, n int) []adaptertest.Message {
					return readTopic(t, dl, n, 45*time.Second)
				},
				Kill: func(t *testing.T, src adapters.Source) { src.(*Source).kill() },
			})
		})
	}
}

// TestNotDoneRedeliveredWithCount: concurrent not-done goes through the retry topic and
// comes back with DeliveryCount/Redelivered; a completed message does not.
func TestNotDoneRedeliveredWithCount(t *testing.T) {
	topic := fmt.Sprintf("mqsc-rmq-notdone-%d", time.Now().UnixNano()%1e9)
	createTopic(t, topic, 2)
	p := newProducer(t)
	ms := msgs("nd", 2, "")
	produce(t, p, topic, ms...)
	s := open(t, sourceConfig(t, topic, "concurrent", "topic"), "")
	seen := map[string]*adapters.Delivery{}
	for len(seen) < 2 {
		d := read(t, s, 30*time.Second)
		seen[d.ID] = d
		if d.DeliveryCount != 0 || d.Redelivered {
			t.Fatalf("first delivery of %s: count %d redelivered %v", d.ID, d.DeliveryCount, d.Redelivered)
		}
		if d.Source != "rocketmq://"+topic || !d.HasCoordinates || d.Time.IsZero() {
			t.Fatalf("fields: %+v", d)
		}
	}
	seen[ms[0].ID].Settle(adapters.ErrNotDone)
	seen[ms[1].ID].Settle(nil)
	start := time.Now()
	d := read(t, s, 75*time.Second)
	if d.ID != ms[0].ID {
		t.Fatalf("redelivered %s, want %s", d.ID, ms[0].ID)
	}
	if d.DeliveryCount != 1 || !d.Redelivered {
		t.Fatalf("redelivery of %s: count %d redelivered %v, want 1 true", d.ID, d.DeliveryCount, d.Redelivered)
	}
	if d.Source != "rocketmq://"+topic {
		t.Fatalf("redelivery Source = %q", d.Source)
	}
	t.Logf("redelivered through the retry topic after %v", time.Since(start))
	d.Settle(nil)
	closeSource(t, s)
}

// TestOrderly: per-queue order, Lane set, not-done pauses the queue for suspend_time (no
// spin) and the same message comes back first with a growing DeliveryCount.
func TestOrderly(t *testing.T) {
	skipOrderlyUnderRace(t)
	topic := fmt.Sprintf("mqsc-rmq-orderly-%d", time.Now().UnixNano()%1e9)
	createTopic(t, topic, 4)
	p := newProducer(t)
	a := msgs("ord-a", 20, "key-a")
	b := msgs("ord-b", 20, "key-b")
	produce(t, p, topic, append(a, b...)...)
	cfg := sourceConfig(t, topic, "orderly", "topic")
	s := open(t, cfg, "")

	pos := map[string]int{}
	for i, m := range a {
		pos[m.ID] = i
	}
	for i, m := range b {
		pos[m.ID] = i
	}
	last := map[string]int{}
	lanes := map[string]string{}
	retried := false
	var firstNotDone time.Time
	done := 0
	for done < len(a)+len(b) {
		d := read(t, s, 30*time.Second)
		if d.Lane == "" || !strings.HasPrefix(d.Lane, topic+"/") {
			t.Fatalf("%s: Lane = %q", d.ID, d.Lane)
		}
		key := d.Key
		if l, ok := lanes[key]; ok && l != d.Lane {
			t.Fatalf("key %s on two lanes: %s and %s", key, l, d.Lane)
		}
		lanes[key] = d.Lane
		p := pos[d.ID]
		if prev, ok := last[key]; ok && p != prev+1 && !(p == prev && d.DeliveryCount > 0) {
			t.Fatalf("key %s: got #%d after #%d (count %d)", key, p, prev, d.DeliveryCount)
		}
		last[key] = p
		// Fail message #5 of key-a twice: it must come back (same lane, first), after a pause.
		if key == "key-a" && p == 5 && d.DeliveryCount < 2 {
			if d.DeliveryCount == 0 {
				firstNotDone = time.Now()
			} else if gap := time.Since(firstNotDone); gap < cfg.SuspendTime*8/10 {
				t.Fatalf("orderly retry after %v, want a pause of about suspend_time %v", gap, cfg.SuspendTime)
			}
			retried = true
			d.Settle(adapters.ErrNotDone)
			continue
		}
		d.Settle(nil)
		done++
	}
	if !retried {
		t.Fatal("the not-done path was not exercised")
	}
	closeSource(t, s)
}

// TestBrokerDeadLetter: dead_letter_mode broker moves the message to %DLQ%<group>, in both
// modes, and it is not redelivered.
func TestBrokerDeadLetter(t *testing.T) {
	for _, mode := range []string{"concurrent", "orderly"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "orderly" {
				skipOrderlyUnderRace(t)
			}
			topic := fmt.Sprintf("mqsc-rmq-bdlq-%s-%d", mode, time.Now().UnixNano()%1e9)
			createTopic(t, topic, 2)
			p := newProducer(t)
			ms := msgs("bdlq", 2, "k")
			ms[0].Headers = []adapters.Header{{Key: "x-keep", Value: "yes"}}
			produce(t, p, topic, ms...)
			cfg := sourceConfig(t, topic, mode, "broker")
			s := open(t, cfg, "")
			if err := s.DeadLetter(context.Background(), &adapters.Delivery{ID: "nope"}, adapters.Failure{}); !errors.Is(err, ErrUnknownDelivery) {
				t.Fatalf("DeadLetter of a foreign delivery = %v, want ErrUnknownDelivery", err)
			}
			for range 2 {
				d := read(t, s, 30*time.Second)
				if d.ID == ms[0].ID {
					if err := s.DeadLetter(context.Background(), d, adapters.Failure{Reason: "permanent", Status: 400, Error: "bad", Attempts: 1, Time: time.Now()}); err != nil {
						t.Fatalf("DeadLetter: %v", err)
					}
				}
				d.Settle(nil)
			}
			dlq := "%DLQ%" + cfg.Group
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			waitRoute(t, ctx, dlq)
			got := readTopic(t, dlq, 1, 30*time.Second)
			if len(got) != 1 || got[0].ID != ms[0].ID || string(got[0].Payload) != string(ms[0].Payload) {
				t.Fatalf("%s holds %+v, want only %s", dlq, got, ms[0].ID)
			}
			closeSource(t, s)

			// Neither message comes back to the group.
			s2 := open(t, cfg, "")
			marker := msgs("marker", 1, "k")
			produce(t, p, topic, marker...)
			d := read(t, s2, 30*time.Second)
			if d.ID != marker[0].ID {
				t.Fatalf("after dead-lettering got %s, want the marker", d.ID)
			}
			d.Settle(nil)
			closeSource(t, s2)
		})
	}
}

// TestRestartNoGoroutineLeak: opening and closing sources leaves no goroutines behind,
// apart from the client's sleepers that notice Shutdown only when they wake: statistics
// (issue #1147, next minute/hour/day boundary) and the expiry sweep (clientConsumeTimeout).
func TestRestartNoGoroutineLeak(t *testing.T) {
	topic := fmt.Sprintf("mqsc-rmq-leak-%d", time.Now().UnixNano()%1e9)
	createTopic(t, topic, 2)
	p := newProducer(t)
	cfg := sourceConfig(t, topic, "concurrent", "topic")
	dl := topic // dead-letter producer started too (the target is irrelevant here)

	cycle := func(i int) {
		s, err := New(cfg, dl, WithLogger(testLogger(t)))
		if err != nil {
			t.Fatalf("New #%d: %v", i, err)
		}
		lifecycletest.Start(t, s.Run) // Close ends it
		m := msgs(fmt.Sprintf("leak%d", i), 1, "")
		produce(t, p, topic, m...)
		d := read(t, s, 30*time.Second)
		d.Settle(nil)
		closeSource(t, s)
	}
	cycle(0) // warm up process-wide state (log bridge, admin, producer)
	base := goroutines(t)
	for i := 1; i <= 3; i++ {
		cycle(i)
	}
	deadline := time.Now().Add(40 * time.Second)
	for {
		n := goroutines(t)
		if n <= base {
			t.Logf("goroutines back to %d (baseline %d)", n, base)
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d after 3 restarts, baseline %d\n%s", n, base, buf)
		}
		time.Sleep(200 * time.Millisecond) // polling with a deadline
	}
}

// goroutines counts goroutines, leaving out the client's goroutines that sleep before they
// look at Shutdown: statistics (issue #1147) and the expiry sweep's first sleep of
// clientConsumeTimeout in pushConsumer.Start. Both exit by themselves.
func goroutines(t *testing.T) int {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		switch {
		case strings.TrimSpace(g) == "",
			strings.Contains(g, "consumer.(*statsItemSet).init"),
			strings.Contains(g, "time.Sleep") && strings.Contains(g, "consumer.(*pushConsumer).Start"):
			continue
		}
		n++
	}
	return n
}

// TestBrokerRestart restarts the broker (through the harness script) while messages are in
// flight: nothing is lost, Ready reports the outage and recovers. Runs only when the harness
// script is present and its broker is the one under test.
func TestBrokerRestart(t *testing.T) {
	_, broker := env(t)
	script, _ := filepath.Abs("../../e2e/harness/rocketmq.sh")
	if _, err := os.Stat(script); err != nil {
		t.Skipf("harness script not found: %v", err)
	}
	if out, err := exec.Command(script, "env").Output(); err != nil || !strings.Contains(string(out), "MQSIDECAR_E2E_ROCKETMQ_BROKER="+broker) {
		t.Skipf("broker %s is not the harness broker (%q, %v)", broker, out, err)
	}
	topic := fmt.Sprintf("mqsc-rmq-restart-%d", time.Now().UnixNano()%1e9)
	createTopic(t, topic, 4)
	p := newProducer(t)
	before := msgs("before", 40, "")
	produce(t, p, topic, before...)
	s := open(t, sourceConfig(t, topic, "concurrent", "topic"), "")

	want := map[string]bool{}
	for _, m := range before {
		want[m.ID] = true
	}
	// Complete half, keep a few unsettled across the restart.
	var held []*adapters.Delivery
	for i := 0; i < 25; i++ {
		d := read(t, s, 30*time.Second)
		if i%5 == 0 {
			held = append(held, d)
			continue
		}
		delete(want, d.ID)
		d.Settle(nil)
	}
	// Watch Ready while the broker is away: it must report the outage.
	var notReady atomic.Bool
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			if s.Ready() != nil {
				notReady.Store(true)
			}
			select {
			case <-stopWatch:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	cmd := exec.Command(script, "restart-broker")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	err := cmd.Run()
	close(stopWatch)
	<-watched
	if err != nil {
		t.Fatalf("restart-broker: %v", err)
	}
	if !notReady.Load() {
		t.Errorf("Ready stayed nil while the broker was restarting")
	}
	// The held ones are now not done; the broker is back.
	for _, d := range held {
		d.Settle(adapters.ErrNotDone)
	}
	after := msgs("after", 10, "")
	produce(t, p, topic, after...)
	for _, m := range after {
		want[m.ID] = true
	}
	deadline := time.Now().Add(90 * time.Second)
	for len(want) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after the broker restart, %d messages never arrived: %v", len(want), want)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		d, err := s.Read(ctx)
		cancel()
		if err != nil {
			continue
		}
		delete(want, d.ID)
		d.Settle(nil)
	}
	ready := time.Now().Add(60 * time.Second)
	for s.Ready() != nil {
		if time.Now().After(ready) {
			t.Fatalf("Ready still %v after the broker came back", s.Ready())
		}
		time.Sleep(200 * time.Millisecond) // polling with a deadline
	}
	closeSource(t, s)
}
