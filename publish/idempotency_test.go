package publish

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"testing"

	"github.com/mqsidecar/mqsidecar/adapters"
)

func TestRetryOfAConfirmedKeyAnswersTheFirstReceiptWithoutSending(t *testing.T) {
	pub := &fakePublisher{}
	_, hs, reg := newTestServer(t, pub, &memRecords{}, nil)
	r1, b1 := post(t, hs.URL+"/v1/publish/t", "payload", "Idempotency-Key", "k1")
	r2, b2 := post(t, hs.URL+"/v1/publish/t", "payload", "Idempotency-Key", "k1")
	if r1.StatusCode != 200 || r2.StatusCode != 200 || b1 != b2 {
		t.Fatalf("answers %d %s / %d %s", r1.StatusCode, b1, r2.StatusCode, b2)
	}
	if pub.count() != 1 || pub.sent[0].ID != "k1" {
		t.Fatalf("sent %d times (%+v)", pub.count(), pub.sent)
	}
	if r1.Header.Get(HeaderReplayed) != "" || r2.Header.Get(HeaderReplayed) != "true" {
		t.Fatalf("%s: %q then %q", HeaderReplayed, r1.Header.Get(HeaderReplayed), r2.Header.Get(HeaderReplayed))
	}
	// ce-id is the key when Idempotency-Key is absent.
	if r, b := post(t, hs.URL+"/v1/publish/t", "payload", "ce-id", "k1"); r.StatusCode != 200 || b != b1 || pub.count() != 1 {
		t.Fatalf("ce-id retry: %d %s, sent %d", r.StatusCode, b, pub.count())
	}
	if v := counterValue(t, reg, "t", "replayed"); v != 2 {
		t.Fatalf("replayed counter %v", v)
	}
}

func TestKeyReusedWithAnotherPayloadOrTopicIs422(t *testing.T) {
	pub := &fakePublisher{}
	_, hs, _ := newTestServer(t, pub, &memRecords{}, nil)
	post(t, hs.URL+"/v1/publish/t", "one", "Idempotency-Key", "k")
	if r, b := post(t, hs.URL+"/v1/publish/t", "two", "Idempotency-Key", "k"); r.StatusCode != 422 {
		t.Fatalf("other payload: %d %s", r.StatusCode, b)
	}
	if r, b := post(t, hs.URL+"/v1/publish/u", "one", "Idempotency-Key", "k"); r.StatusCode != 422 {
		t.Fatalf("other topic: %d %s", r.StatusCode, b)
	}
	if pub.count() != 1 {
		t.Fatalf("sent %d", pub.count())
	}
}

func TestRetryWhileInFlightIs409(t *testing.T) {
	pub := &fakePublisher{block: make(chan struct{}), entered: make(chan struct{}, 1)}
	rec := &memRecords{}
	_, hs, _ := newTestServer(t, pub, rec, nil)
	var wg sync.WaitGroup
	wg.Add(1)
	var first answer
	go func() { defer wg.Done(); first, _ = post(t, hs.URL+"/v1/publish/t", "p", "Idempotency-Key", "k") }()
	<-pub.entered // the first request holds the key and is being published
	r, b := post(t, hs.URL+"/v1/publish/t", "p", "Idempotency-Key", "k")
	r2, _ := post(t, hs.URL+"/v1/publish/t", "other", "Idempotency-Key", "k")
	rec.mu.Lock()
	stored := len(rec.m)
	rec.mu.Unlock()
	close(pub.block)
	wg.Wait()
	if r.StatusCode != 409 || r2.StatusCode != 422 {
		t.Fatalf("retry while in flight: %d %s; with another payload: %d", r.StatusCode, b, r2.StatusCode)
	}
	if stored != 0 {
		t.Fatalf("%d records stored while the publish was in flight: only confirmed keys are", stored)
	}
	if first.StatusCode != 200 || pub.count() != 1 {
		t.Fatalf("first answered %d, sent %d", first.StatusCode, pub.count())
	}
}

func TestRetryAfterAFailureSendsAgainWithTheSameID(t *testing.T) {
	var fail sync.Mutex
	failing := true
	pub := &fakePublisher{next: func(adapters.OutMessage) error {
		fail.Lock()
		defer fail.Unlock()
		if failing {
			failing = false
			return fmt.Errorf("%w: timed out after the send", adapters.ErrOutcomeUnknown)
		}
		return nil
	}}
	_, hs, _ := newTestServer(t, pub, &memRecords{}, nil)
	if r, b := post(t, hs.URL+"/v1/publish/t", "p", "Idempotency-Key", "k"); r.StatusCode != 504 {
		t.Fatalf("first: %d %s", r.StatusCode, b)
	}
	r, b := post(t, hs.URL+"/v1/publish/t", "p", "Idempotency-Key", "k")
	if r.StatusCode != 200 || pub.count() != 1 || pub.sent[0].ID != "k" {
		t.Fatalf("retry: %d %s, sent %+v", r.StatusCode, b, pub.sent)
	}
}

func TestStoreFailureIs503AndSendsNothing(t *testing.T) {
	pub := &fakePublisher{}
	_, hs, _ := newTestServer(t, pub, &memRecords{fail: errors.New("disk gone")}, nil)
	if r, b := post(t, hs.URL+"/v1/publish/t", "p", "Idempotency-Key", "k"); r.StatusCode != 503 || pub.count() != 0 {
		t.Fatalf("%d %s, sent %d", r.StatusCode, b, pub.count())
	}
	// Without a key nothing is remembered, so the store is not needed.
	if r, b := post(t, hs.URL+"/v1/publish/t", "p"); r.StatusCode != 200 || pub.count() != 1 {
		t.Fatalf("%d %s, sent %d", r.StatusCode, b, pub.count())
	}
}

func TestDaprPublish(t *testing.T) {
	pub := &fakePublisher{}
	_, hs, _ := newTestServer(t, pub, &memRecords{}, nil)
	r, b := post(t, hs.URL+"/v1.0/publish/pubsub/orders?metadata.partitionKey=c7&metadata.cloudevent.id=e1&metadata.tenant=t1", `{"x":1}`, "Content-Type", "application/json")
	if r.StatusCode != 204 || b != "" {
		t.Fatalf("%d %q", r.StatusCode, b)
	}
	m := pub.sent[0]
	if m.Topic != "orders" || m.Key != "c7" || m.ID != "e1" || string(m.Payload) != `{"x":1}` || m.ContentType != "application/json" {
		t.Fatalf("sent %+v", m)
	}
	if !hasHeader(m, "tenant", "t1") {
		t.Fatalf("headers %v", m.Headers)
	}
	// The ID is an idempotency key as with Idempotency-Key.
	if r, _ := post(t, hs.URL+"/v1.0/publish/pubsub/orders?metadata.cloudevent.id=e1", `{"x":1}`); r.StatusCode != 204 || pub.count() != 1 {
		t.Fatalf("retry: %d, sent %d", r.StatusCode, pub.count())
	}
	pub.next = func(adapters.OutMessage) error { return fmt.Errorf("%w: down", adapters.ErrUnavailable) }
	r, b = post(t, hs.URL+"/v1.0/publish/pubsub/orders", "y")
	var de daprError
	if r.StatusCode != 503 || json.Unmarshal([]byte(b), &de) != nil || de.ErrorCode != "ERR_PUBSUB_PUBLISH_MESSAGE" || de.Message == "" {
		t.Fatalf("%d %s", r.StatusCode, b)
	}
}

func hasHeader(m adapters.OutMessage, k, v string) bool {
	for _, h := range m.Headers {
		if h.Key == k && h.Value == v {
			return true
		}
	}
	return false
}

func TestRabbitMQPathCarriesTheRoutingKey(t *testing.T) {
	pub := &fakePublisher{}
	_, hs, _ := newTestServer(t, pub, nil, func(o *Options) { o.Broker = "rabbitmq" })
	post(t, hs.URL+"/v1/publish/orders/eu.created", "p")
	post(t, hs.URL+"/v1/publish/orders", "p", HeaderRoutingKey, "us.created")
	if pub.sent[0].Topic != "orders" || pub.sent[0].RoutingKey != "eu.created" || pub.sent[1].Topic != "orders" || pub.sent[1].RoutingKey != "us.created" {
		t.Fatalf("sent %+v", pub.sent)
	}
}

// TestNewIDIsARandomUUIDv4: the ID of a message published without a key is a UUID of
// version 4 and variant 10, in the canonical form, and a new one each time.
func TestNewIDIsARandomUUIDv4(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 1000 {
		id := newID()
		if !re.MatchString(id) || seen[id] {
			t.Fatalf("newID %q (seen before: %v)", id, seen[id])
		}
		seen[id] = true
	}
}
