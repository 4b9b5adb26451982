//go:build e2e

package rocketmq

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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

// publishWithin retries ErrUnavailable until the producer started (Run just began).
func publishWithin(t *testing.T, p *Publisher, m adapters.OutMessage) (adapters.Receipt, error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := p.Publish(ctx, m)
		cancel()
		if !errors.Is(err, adapters.ErrUnavailable) || time.Now().After(deadline) {
			return r, err
		}
		time.Sleep(50 * time.Millisecond)
	}
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
	verb := func(args ...string) {
		t0 := time.Now()
		out, err := exec.Command("bash", append([]string{script}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("rocketmq.sh %v: %v\n%s", args, err, out)
		}
		t.Logf("rocketmq.sh %v: %v", args, time.Since(t0).Round(100*time.Millisecond))
	}
	t.Cleanup(func() {
		if t.Failed() {
			_, _ = exec.Command("bash", script, "start").CombinedOutput()
		}
	})
	topic := fmt.Sprintf("mqsc-rmq-pubchaos-%d", time.Now().UnixNano()%1e9)
	createTopic(t, topic, 4)
	p := openPublisher(t)
	run := fmt.Sprintf("%d", time.Now().UnixNano()%1e9)

	var (
		mu        sync.Mutex
		confirmed = map[string]bool{}
		attempted = map[string]bool{}
		outcomes  = map[string]int{}
		reasons   = map[string]int{}
		stop      atomic.Bool
		wg        sync.WaitGroup
	)
	for c := range 8 {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				id := fmt.Sprintf("%s-c%d-%05d", run, c, i)
				for {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					_, err := p.Publish(ctx, adapters.OutMessage{Topic: topic, ID: id, Payload: []byte("payload " + id)})
					cancel()
					mu.Lock()
					attempted[id] = true
					switch {
					case err == nil:
						confirmed[id] = true
						outcomes["SEND_OK"]++
					case errors.Is(err, adapters.ErrOutcomeUnknown):
						outcomes["outcome-unknown"]++
					case errors.Is(err, adapters.ErrUnavailable):
						outcomes["unavailable"]++
						reasons[strings.ReplaceAll(err.Error(), id, "<id>")]++
					default:
						outcomes[err.Error()]++
					}
					mu.Unlock()
					if err == nil {
						break
					}
					if !errors.Is(err, adapters.ErrOutcomeUnknown) && !errors.Is(err, adapters.ErrUnavailable) {
						t.Errorf("publish %s: %v (not a retryable class)", id, err)
						return
					}
					time.Sleep(100 * time.Millisecond) // a client backing off
				}
			}
		})
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(confirmed) }
	resumed := func() bool { n := count(); time.Sleep(500 * time.Millisecond); return count() > n }
	waitFor := func(what string, cond func() bool) {
		deadline := time.Now().Add(45 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				stop.Store(true)
				t.Fatalf("not within 45s: %s", what)
			}
		}
	}
	waitFor("publishing started", func() bool { return count() > 200 })
	verb("restart-broker")
	waitFor("publishing resumed after the broker restart", resumed)
	verb("restart", "--hard")
	waitFor("publishing resumed after the kill -9", resumed)
	stop.Store(true)
	wg.Wait()

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
	lost, foreign, copies := 0, 0, 0
	for id := range confirmed {
		if seen[id] == 0 {
			lost++
			if lost <= 10 {
				t.Errorf("%s answered SEND_OK but is not in the topic", id)
			}
		}
	}
	for id, k := range seen {
		if !attempted[id] {
			foreign++
			t.Errorf("%s in the topic was never published", id)
		}
		copies += k - 1
	}
	t.Logf("%d SEND_OK, %d distinct IDs read, %d copies of a retried ID (removed by the consumer's dedup), %d lost; outcomes %v",
		len(confirmed), len(seen), copies, lost, outcomes)
	for why, n := range reasons {
		if n > 100 {
			t.Logf("%d× %s", n, why)
		}
	}
	if lost > 0 || foreign > 0 {
		t.Fatalf("%d confirmed messages lost, %d unknown IDs", lost, foreign)
	}
	if outcomes["outcome-unknown"]+outcomes["unavailable"] == 0 {
		t.Fatal("no publish failed during the outages: the disruption did not happen")
	}
}
