package kafka

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/mqsidecar/mqsidecar/adapters"
)

func newPublisher(t *testing.T, brokers []string, timeout time.Duration) *Publisher {
	t.Helper()
	cfg := Defaults()
	cfg.Brokers = brokers
	p, err := NewPublisher(cfg, timeout, WithPublisherLogger(testLogger(t)), WithPublisherClientOptions(kgo.UnknownTopicRetries(1)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

// TestPublisherWritesWhatTheConsumerReads: a published message is read back by the
// consuming side configured with message_id: header:ce-id with the same ID, payload, key,
// content type and headers, and the receipt names its partition and offset.
func TestPublisherWritesWhatTheConsumerReads(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	p := newPublisher(t, c.ListenAddrs(), 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := adapters.OutMessage{Topic: "orders", ID: "key-1", Key: "cust-7", ContentType: "application/json",
		Headers: []adapters.Header{{Key: "ce-type", Value: "order.created"}, {Key: "ce-id", Value: "ignored"}}, Payload: []byte(`{"a":1}`)}
	rc, err := p.Publish(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Broker != "kafka" || rc.Topic != "orders" || rc.ID != "key-1" || rc.Partition == nil || *rc.Partition != 0 || rc.Offset == nil || *rc.Offset != 0 {
		t.Fatalf("receipt %+v", rc)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics("orders"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	fs := cl.PollFetches(ctx)
	if err := fs.Err(); err != nil || fs.NumRecords() != 1 {
		t.Fatalf("poll: %v, %d records", err, fs.NumRecords())
	}
	// The consuming side's reading of the record, with message_id: header:ce-id.
	cfg := testConfig(c.ListenAddrs(), "orders")
	cfg.MessageID = "header:" + IDHeader
	d := (&Source{cfg: cfg}).delivery(fs.Records()[0], &partState{})
	if d.ID != "key-1" || string(d.Payload) != `{"a":1}` || d.Key != "cust-7" || d.ContentType != "application/json" {
		t.Fatalf("consumed %+v", d)
	}
	ids := 0
	for _, h := range d.Headers {
		if h.Key == IDHeader {
			ids++
		}
	}
	if ids != 1 {
		t.Fatalf("%d ce-id headers: %v", ids, d.Headers)
	}
}

func TestPublisherUnknownTopic(t *testing.T) {
	cfg := Defaults()
	cfg.Brokers = newCluster(t)
	p, err := NewPublisher(cfg, 5*time.Second, WithPublisherLogger(testLogger(t))) // franz-go's default retries
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = p.Publish(ctx, adapters.OutMessage{Topic: "nope", ID: "1", Payload: []byte("x")})
	if !errors.Is(err, adapters.ErrUnknownTopic) {
		t.Fatalf("err %v, want ErrUnknownTopic well within the request's 3s", err)
	}
	_, err = p.Publish(ctx, adapters.OutMessage{Topic: "bad/name", ID: "1", Payload: []byte("x")})
	if !errors.Is(err, adapters.ErrUnknownTopic) {
		t.Fatalf("err %v, want ErrUnknownTopic", err)
	}
}

// TestPublisherBrokerDownIsUnavailableQuickly: with no broker listening, Publish fails
// with ErrUnavailable long before its timeout, once Run noticed.
func TestPublisherBrokerDownIsUnavailableQuickly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := newPublisher(t, []string{addr}, 20*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for p.down.Load() == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	_, err = p.Publish(context.Background(), adapters.OutMessage{Topic: "t", ID: "1", Payload: []byte("x")})
	if !errors.Is(err, adapters.ErrUnavailable) || time.Since(start) > time.Second {
		t.Fatalf("err %v after %s, want ErrUnavailable at once", err, time.Since(start))
	}
}

// TestPublisherNothingSentIsUnavailable: a publish whose deadline ends before any produce
// request was written is ErrUnavailable, not ErrOutcomeUnknown.
func TestPublisherNothingSentIsUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Defaults()
	cfg.Brokers = []string{ln.Addr().String()}                                   // accepts connections and never answers
	p, err := NewPublisher(cfg, time.Second, WithPublisherLogger(testLogger(t))) // Run not started: no ping
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	t.Cleanup(func() { ln.Close() }) // first: the pending connections are reset, so Close need not wait for them
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = p.Publish(ctx, adapters.OutMessage{Topic: "t", ID: "1", Payload: []byte("x")})
	if !errors.Is(err, adapters.ErrUnavailable) || time.Since(start) > 2*time.Second {
		t.Fatalf("err %v after %s, want ErrUnavailable at the 300ms deadline", err, time.Since(start))
	}
}

// TestPublisherAnswersAtItsDeadlineWhileTheBrokerHoldsTheRecord: a produce request the
// broker neither answers nor drops (a broker hung or killed mid-request) ends the publish
// at its deadline with ErrOutcomeUnknown, although the idempotent producer keeps the
// record until the broker answers.
func TestPublisherAnswersAtItsDeadlineWhileTheBrokerHoldsTheRecord(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "t"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before c.Close (cleanups run last-in first-out)
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	p := newPublisher(t, c.ListenAddrs(), 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := p.Publish(ctx, adapters.OutMessage{Topic: "t", ID: "1", Payload: []byte("x")})
		errc <- err
	}()
	select {
	case err := <-errc:
		if !errors.Is(err, adapters.ErrOutcomeUnknown) {
			t.Fatalf("err %v, want ErrOutcomeUnknown", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Publish still waiting 3s after its 500ms deadline")
	}
}
