//go:build e2e

package rocketmq

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/adaptertest"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
)

// openPublisher runs a publisher for the test cluster and closes it at cleanup.
func openPublisher(t *testing.T) *Publisher {
	t.Helper()
	cfg := sourceConfig(t, "unused-by-the-publisher", "concurrent", "topic")
	p, err := NewPublisher(cfg, WithLogger(testLogger(t)))
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	lifecycletest.Start(t, p.Run)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	return p
}

// publishWithin publishes m, retrying ErrUnavailable while the publisher connects.
func publishWithin(t *testing.T, p *Publisher, m adapters.OutMessage) (adapters.Receipt, error) {
	t.Helper()
	return adaptertest.PublishWithin(p, m, 20*time.Second)
}

// TestPublishConsumed: a publish answered SEND_OK is consumed by the source with its
// default message_id (uniq_key) as the ID the publisher was given, with the key, content
// type and headers; the receipt names the queue and offset.
func TestPublishConsumed(t *testing.T) {
	topic := fmt.Sprintf("mqsc-rmq-pub-%d", time.Now().UnixNano()%1e9)
	createTopic(t, topic, 4)
	p := openPublisher(t)
	m := adapters.OutMessage{
		Topic: topic, ID: fmt.Sprintf("pub-%d", time.Now().UnixNano()), Key: "customer-7", ContentType: "application/json",
		Headers: []adapters.Header{{Key: "ce-type", Value: "order.created"}, {Key: "traceparent", Value: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
		Payload: []byte(`{"n":1}`),
	}
	r, err := publishWithin(t, p, m)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if r.Broker != "rocketmq" || r.ID != m.ID || r.Partition == nil || r.Offset == nil || r.BrokerMessageID == "" {
		t.Fatalf("receipt %+v", r)
	}
	s := open(t, sourceConfig(t, topic, "concurrent", "topic"), "")
	d := read(t, s, 60*time.Second)
	d.Settle(nil)
	if d.ID != m.ID || d.Key != m.Key || d.ContentType != m.ContentType || string(d.Payload) != string(m.Payload) {
		t.Fatalf("consumed id %q key %q content type %q payload %q; published %+v", d.ID, d.Key, d.ContentType, d.Payload, m)
	}
	if d.Partition != *r.Partition || d.Offset != *r.Offset {
		t.Errorf("consumed at queue %d offset %d, receipt %d/%d", d.Partition, d.Offset, *r.Partition, *r.Offset)
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
}

// TestPublishUnknownTopic: a topic the cluster does not have is ErrUnknownTopic, and the
// publish does not create it.
func TestPublishUnknownTopic(t *testing.T) {
	ns, _ := env(t)
	topic := fmt.Sprintf("mqsc-rmq-nope-%d", time.Now().UnixNano()%1e9)
	p := openPublisher(t)
	for range 2 {
		if _, err := publishWithin(t, p, adapters.OutMessage{Topic: topic, ID: "x", Payload: []byte("x")}); !errors.Is(err, adapters.ErrUnknownTopic) {
			t.Fatalf("publish to %s: %v, want ErrUnknownTopic", topic, err)
		}
	}
	if err := probeRoute([]string{ns}, topic, 5*time.Second); !errors.Is(err, ErrTopicNotExist) {
		t.Fatalf("after the publish the name server answers %v for %s, want no route", err, topic)
	}
}

// TestPublishBrokerChaos: 8 clients publish while the broker is stopped and started, then
// the name server and broker are killed with SIGKILL and started (the harness's verbs). A
// client retries ErrUnavailable and ErrOutcomeUnknown with the same ID. Afterwards every
// ID answered SEND_OK is in the topic (0 lost), every message there has an ID that was
// published, and copies share their UNIQ_KEY, which the consumer side dedups by. It
// restarts the cluster, so it runs only when MQSIDECAR_E2E_ROCKETMQ_CHAOS=1 says the
// cluster of MQSIDECAR_E2E_ROCKETMQ is the caller's own.
func TestPublishBrokerChaos(t *testing.T) {
	if os.Getenv("MQSIDECAR_E2E_ROCKETMQ_CHAOS") != "1" {
		t.Skip("MQSIDECAR_E2E_ROCKETMQ_CHAOS=1 is not set (disruptive: stops and kills the broker)")
	}
	script, _ := filepath.Abs("../../e2e/harness/rocketmq.sh")
	verb := func(args ...string) { adaptertest.HarnessVerb(t, script, args...) }

	topic := fmt.Sprintf("mqsc-rmq-pubchaos-%d", time.Now().UnixNano()%1e9)
	createTopic(t, topic, 4)
	p := openPublisher(t)
	stream := adaptertest.StartPublishStream(t, p, 8, func(id string) adapters.OutMessage {
		return adapters.OutMessage{Topic: topic, ID: id, Payload: []byte("payload " + id)}
	})
	stream.WaitProgress(t, 45*time.Second, "publishing started")
	verb("restart-broker")
	stream.WaitProgress(t, 45*time.Second, "publishing resumed after the broker restart")
	verb("restart", "--hard")
	stream.WaitProgress(t, 45*time.Second, "publishing resumed after the kill -9")
	stream.Stop()
	confirmed := stream.ConfirmedIDs()

	seen := map[string]int{}
	allConfirmed := func(got []adaptertest.Message) bool {
		ids := make(map[string]bool, len(got))
		for _, m := range got {
			ids[m.ID] = true
		}
		for id := range confirmed {
			if !ids[id] {
				return false
			}
		}
		return true
	}
	for _, m := range readTopicUntil(t, topic, allConfirmed, 60*time.Second) {
		seen[m.ID]++
	}
	stream.Check(t, seen)
}
