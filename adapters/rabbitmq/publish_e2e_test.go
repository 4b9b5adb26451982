//go:build e2e

package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/adaptertest"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// openPublisher runs a publisher on url (default brokerURL) and closes it at cleanup.
func openPublisher(t *testing.T, url string, run bool) *Publisher {
	t.Helper()
	cfg := Defaults()
	cfg.URL = settings.Secret(url)
	cfg.Queue = "unused-by-the-publisher"
	cfg.PublishChannels = 8
	log, logs := testLogger(t)
	p, err := NewPublisher(cfg, WithLogger(log), WithBackoff(50*time.Millisecond, 500*time.Millisecond))
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	if run {
		lifecycletest.Start(t, p.Run)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Close(ctx)
		if t.Failed() {
			t.Logf("publisher logs:\n%s", logs.String())
		}
	})
	return p
}

// publishWithin publishes m, retrying ErrUnavailable while the publisher connects.
func publishWithin(t *testing.T, p *Publisher, m adapters.OutMessage) (adapters.Receipt, error) {
	t.Helper()
	return adaptertest.PublishWithin(p, m, 20*time.Second)
}

// exchangeWithQueue declares a durable direct exchange (deleted at cleanup) and, when queue
// is not "", a durable queue bound to it with routing key "k".
func exchangeWithQueue(t *testing.T, a *admin, queue string) string {
	t.Helper()
	ex := uniqueName(t) + "-x"
	a.must("declare exchange", func(ch *amqp.Channel) error {
		return ch.ExchangeDeclare(ex, "direct", true, false, false, false, nil)
	})
	t.Cleanup(func() { _ = a.do(func(ch *amqp.Channel) error { return ch.ExchangeDelete(ex, false, false) }) })
	if queue != "" {
		a.queue(queue, nil)
		a.must("bind", func(ch *amqp.Channel) error { return ch.QueueBind(queue, "k", ex, false, nil) })
	}
	return ex
}

// TestPublishConsumed: a confirmed publish reaches the queue, and the consumer side reads
// the ID, content type and headers the publisher wrote; the receipt says what was confirmed.
func TestPublishConsumed(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t)
	ex := exchangeWithQueue(t, a, q)
	p := openPublisher(t, brokerURL(t), true)
	m := adapters.OutMessage{
		Topic: ex, RoutingKey: "k", ID: "pub-" + randHex(4), ContentType: "application/json",
		Headers: []adapters.Header{{Key: "ce-type", Value: "order.created"}, {Key: "traceparent", Value: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
		Payload: []byte(`{"n":1}`),
	}
	r, err := publishWithin(t, p, m)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if r.Broker != "rabbitmq" || r.ID != m.ID || r.Topic != ex || r.RoutingKey != "k" || len(r.Durability) == 0 {
		t.Fatalf("receipt %+v", r)
	}
	ts := open(t, q, srcOpts{})
	d := readOne(t, ts, 10*time.Second)
	d.Settle(nil)
	if d.ID != m.ID || d.ContentType != m.ContentType || string(d.Payload) != string(m.Payload) {
		t.Fatalf("consumed id %q content type %q payload %q; published %q %q %q", d.ID, d.ContentType, d.Payload, m.ID, m.ContentType, m.Payload)
	}
	got := map[string]string{}
	for _, h := range d.Headers {
		got[h.Key] = h.Value
	}
	for _, h := range m.Headers {
		if got[h.Key] != h.Value {
			t.Errorf("header %s: consumed %q, published %q", h.Key, got[h.Key], h.Value)
		}
	}
	// Persistent: the consumer side cannot see the delivery mode, so ask the broker (the
	// source is closed first, or it would take the message).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = ts.Close(ctx)
	m.ID += "-2"
	if _, err := publishWithin(t, p, m); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if dl := a.get(q, 1, 10*time.Second)[0]; dl.DeliveryMode != amqp.Persistent || dl.MessageId != m.ID {
		t.Fatalf("delivery mode %d message_id %q", dl.DeliveryMode, dl.MessageId)
	}
}

// TestPublishUnroutable: an exchange with no bound queue confirms the message but returns
// it (mandatory): never a success. Also through the default exchange to a missing queue.
func TestPublishUnroutable(t *testing.T) {
	a := newAdmin(t)
	ex := exchangeWithQueue(t, a, "")
	p := openPublisher(t, brokerURL(t), true)
	for _, m := range []adapters.OutMessage{
		{Topic: ex, RoutingKey: "k", ID: "unroutable-1", Payload: []byte("x")},
		{Topic: "", RoutingKey: uniqueName(t) + "-no-such-queue", ID: "unroutable-2", Payload: []byte("x")},
	} {
		for i := range 3 { // the channel stays usable: each attempt is classified alike
			if _, err := publishWithin(t, p, m); !errors.Is(err, adapters.ErrUnroutable) {
				t.Fatalf("publish %d to %q/%q: %v, want ErrUnroutable", i, m.Topic, m.RoutingKey, err)
			}
		}
	}
	// Bind a queue: the same message is now confirmed.
	q := uniqueName(t)
	a.queue(q, nil)
	a.must("bind", func(ch *amqp.Channel) error { return ch.QueueBind(q, "k", ex, false, nil) })
	if _, err := publishWithin(t, p, adapters.OutMessage{Topic: ex, RoutingKey: "k", ID: "routed", Payload: []byte("x")}); err != nil {
		t.Fatalf("publish after binding a queue: %v", err)
	}
}

// TestPublishUnknownExchange: the broker closes the channel with 404; the publish answers
// ErrUnknownTopic, and the publisher's next publish works (the channel was replaced).
func TestPublishUnknownExchange(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t)
	ex := exchangeWithQueue(t, a, q)
	p := openPublisher(t, brokerURL(t), true)
	for i := range 3 {
		_, err := publishWithin(t, p, adapters.OutMessage{Topic: ex + "-missing", RoutingKey: "k", ID: fmt.Sprint("missing-", i), Payload: []byte("x")})
		if !errors.Is(err, adapters.ErrUnknownTopic) {
			t.Fatalf("publish to a missing exchange: %v, want ErrUnknownTopic", err)
		}
		if _, err := publishWithin(t, p, adapters.OutMessage{Topic: ex, RoutingKey: "k", ID: fmt.Sprint("ok-", i), Payload: []byte("x")}); err != nil {
			t.Fatalf("publish after the 404: %v", err)
		}
	}
	if n := len(a.get(q, 3, 10*time.Second)); n != 3 {
		t.Fatalf("%d messages", n)
	}
}

// TestPublishNotConnected: without a broker (or before Run connected) Publish answers
// ErrUnavailable at once, not after the request's timeout.
func TestPublishNotConnected(t *testing.T) {
	p := openPublisher(t, "amqp://guest:guest@127.0.0.1:1/", true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := p.Publish(ctx, adapters.OutMessage{Topic: "x", ID: "a", Payload: []byte("x")})
	if !errors.Is(err, adapters.ErrUnavailable) {
		t.Fatalf("Publish: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("ErrUnavailable after %v", d)
	}
}

// TestPublishBrokerChaos: 8 clients publish a stream while the broker is stopped, started,
// killed with SIGKILL and started again (the harness's verbs). A client retries a publish
// that failed with ErrUnavailable or ErrOutcomeUnknown with the same ID, as the publish
// endpoint's clients do. Afterwards every confirmed ID is in the queue (0 lost), every
// message in the queue carries an ID that was published, and copies (retries of an outcome
// the client could not know) share their ID, which is what the consumer side dedups by.
// It restarts the broker, so it runs only when MQSIDECAR_E2E_RABBITMQ_CHAOS=1 says the
// broker of MQSIDECAR_E2E_RABBITMQ is the caller's own (never the shared dev broker).
func TestPublishBrokerChaos(t *testing.T) {
	if os.Getenv("MQSIDECAR_E2E_RABBITMQ_CHAOS") != "1" {
		t.Skip("MQSIDECAR_E2E_RABBITMQ_CHAOS=1 is not set (disruptive: stops and kills the broker)")
	}
	script := filepath.Join(repoRoot(), "e2e", "harness", "rabbitmq.sh")
	verb := func(args ...string) { adaptertest.HarnessVerb(t, script, args...) }

	a := newAdmin(t)
	q := uniqueName(t)
	ex := exchangeWithQueue(t, a, q)
	p := openPublisher(t, brokerURL(t), true)

	stream := adaptertest.StartPublishStream(t, p, 8, func(id string) adapters.OutMessage {
		return adapters.OutMessage{Topic: ex, RoutingKey: "k", ID: id, Payload: []byte("payload " + id)}
	})
	stream.WaitProgress(t, 20*time.Second, "publishing started")
	verb("stop")
	verb("start")
	stream.WaitProgress(t, 30*time.Second, "publishing resumed after the restart")
	verb("kill")
	verb("start")
	stream.WaitProgress(t, 30*time.Second, "publishing resumed after the kill")
	stream.Stop()

	seen := map[string]int{}
	a2 := newAdmin(t) // the old admin connection died with the broker
	n := a2.count(q)
	a2.must("drain "+q, func(ch *amqp.Channel) error {
		ds, err := ch.Consume(q, "", true, false, false, false, nil)
		if err != nil {
			return err
		}
		for range n {
			select {
			case d := <-ds:
				seen[d.MessageId]++
			case <-time.After(10 * time.Second):
				return fmt.Errorf("%d of %d messages drained", len(seen), n)
			}
		}
		return nil
	})
	stream.Check(t, seen)
}

// TestPublishBrokerBlocked: while a memory alarm makes the broker block publishers
// (connection.blocked), Publish answers ErrUnavailable at once instead of waiting for a
// confirm; after the alarm, publishing works again. It sets an alarm on the whole broker,
// so it runs only with MQSIDECAR_E2E_RABBITMQ_CHAOS=1 (the caller's own broker).
func TestPublishBrokerBlocked(t *testing.T) {
	if os.Getenv("MQSIDECAR_E2E_RABBITMQ_CHAOS") != "1" {
		t.Skip("MQSIDECAR_E2E_RABBITMQ_CHAOS=1 is not set (disruptive: sets a memory alarm on the broker)")
	}
	a := newAdmin(t)
	q := uniqueName(t)
	ex := exchangeWithQueue(t, a, q)
	p := openPublisher(t, brokerURL(t), true)
	m := adapters.OutMessage{Topic: ex, RoutingKey: "k", ID: "before", Payload: []byte("x")}
	if _, err := publishWithin(t, p, m); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	ctl(t, "set_vm_memory_high_watermark", "0")
	t.Cleanup(func() { ctl(t, "set_vm_memory_high_watermark", "0.4") })
	eventually(t, 30*time.Second, "Publish answers ErrUnavailable at once while the broker blocks", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		start := time.Now()
		m.ID = "during"
		_, err := p.Publish(ctx, m)
		return errors.Is(err, adapters.ErrUnavailable) && strings.Contains(err.Error(), "blocks publishing") && time.Since(start) < time.Second
	})
	ctl(t, "set_vm_memory_high_watermark", "0.4")
	m.ID = "after"
	eventually(t, 30*time.Second, "publishing works after the alarm", func() bool {
		_, err := publishWithin(t, p, m)
		return err == nil
	})
}
