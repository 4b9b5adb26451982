package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// shareTopic creates topic with one partition on brokers and produces n records with IDs
// m0..m<n-1> in the message-id header.
func shareTopic(t *testing.T, brokers []string, topic string, n int) {
	t.Helper()
	h := harness(brokers)
	h.Setup(t, topic)
	msgs := make([]struct{ id string }, n)
	recs := make([]*kgo.Record, n)
	for i := range msgs {
		recs[i] = &kgo.Record{Topic: topic, Value: []byte("v"), Headers: []kgo.RecordHeader{{Key: "message-id", Value: fmt.Appendf(nil, "m%d", i)}}}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func newShareSource(t *testing.T, brokers []string, topic string, maxInflight int) *ShareSource {
	t.Helper()
	c := testConfig(brokers, topic)
	c.Mode = ModeShare
	s, err := NewShare(c, "", WithLogger(testLogger(t)), WithMaxInflight(maxInflight))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Run(context.Background()) }()
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func readWithin(t *testing.T, s adapters.Source, d time.Duration) (*adapters.Delivery, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return s.Read(ctx)
}

// collect reads from s for window and returns the deliveries by ID (settling each nil).
func collect(t *testing.T, s adapters.Source, window time.Duration) map[string]*adapters.Delivery {
	t.Helper()
	got := map[string]*adapters.Delivery{}
	end := time.Now().Add(window)
	for time.Now().Before(end) {
		d, err := readWithin(t, s, time.Until(end))
		if err != nil {
			break
		}
		got[d.ID] = d
		d.Settle(nil)
	}
	return got
}

// TestShareAcceptsOnlySettled: the source hands out at most max_inflight records and polls
// again only when all of them were settled (the next poll would accept the others); after a
// kill, every record not settled with nil comes back, the released one and the unsettled
// one counted as redelivered, and none settled with nil does.
func TestShareAcceptsOnlySettled(t *testing.T) {
	brokers := newShareCluster(t, 2*time.Second)
	topic := "share-settled"
	shareTopic(t, brokers, topic, 10)
	s := newShareSource(t, brokers, topic, 4)
	var ds []*adapters.Delivery
	for len(ds) < 4 {
		d, err := readWithin(t, s, 20*time.Second)
		if err != nil {
			t.Fatalf("read %d: %v", len(ds)+1, err)
		}
		if d.DeliveryCount != 0 || d.Redelivered {
			t.Fatalf("first delivery of %s: count %d redelivered %v", d.ID, d.DeliveryCount, d.Redelivered)
		}
		ds = append(ds, d)
	}
	if d, err := readWithin(t, s, 500*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a 5th delivery with 4 unsettled and max_inflight 4: %v, %v", d, err)
	}
	ds[0].Settle(nil)
	ds[1].Settle(adapters.ErrNotDone)
	ds[2].Settle(nil)
	if d, err := readWithin(t, s, 500*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read while %s of the poll is unsettled: %v, %v (the next poll would accept it)", ds[3].ID, d, err)
	}
	s.kill()

	s2 := newShareSource(t, brokers, topic, 4)
	got := collect(t, s2, 8*time.Second)
	for _, d := range []*adapters.Delivery{ds[0], ds[2]} {
		if _, ok := got[d.ID]; ok {
			t.Errorf("%s was settled done but came back", d.ID)
		}
	}
	for _, d := range []*adapters.Delivery{ds[1], ds[3]} {
		r, ok := got[d.ID]
		if !ok {
			t.Errorf("%s (not settled done) did not come back", d.ID)
			continue
		}
		if r.DeliveryCount < 1 || !r.Redelivered {
			t.Errorf("%s came back with count %d redelivered %v, want a count >= 1 and the flag", r.ID, r.DeliveryCount, r.Redelivered)
		}
	}
	if len(got) != 8 {
		t.Errorf("got %d IDs after the kill, want the 8 not settled done: %v", len(got), keys(got))
	}
}

func keys(m map[string]*adapters.Delivery) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestShareRenewsLocks: a record the gate holds for several lock durations stays with its
// member (the lock is renewed), is not fenced, and is accepted by Settle(nil). (A renewal
// reaches the broker with the client's next share fetch, up to a second later: the lock
// must be longer than that.)
func TestShareRenewsLocks(t *testing.T) {
	lock := 3 * time.Second
	brokers := newShareCluster(t, lock)
	topic := "share-renew"
	shareTopic(t, brokers, topic, 1)
	s := newShareSource(t, brokers, topic, 4)
	d, err := readWithin(t, s, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	other := newShareSource(t, brokers, topic, 4)
	if got := collect(t, other, 3*lock); len(got) > 0 {
		t.Fatalf("another member got %v while the first held it", keys(got))
	}
	if d.IsFenced() {
		t.Fatal("the held record was fenced although its lock was renewed")
	}
	d.Settle(nil)
	if got := collect(t, other, 2*lock); len(got) > 0 {
		t.Fatalf("another member got %v after it was accepted", keys(got))
	}
}

// TestShareFencesExpiringLock: where the lock cannot be renewed, the record is fenced
// before its lock expires, and then goes to another member with its delivery count.
func TestShareFencesExpiringLock(t *testing.T) {
	lock := 1500 * time.Millisecond
	brokers := newShareCluster(t, lock)
	topic := "share-expire"
	shareTopic(t, brokers, topic, 1)
	s := newShareSource(t, brokers, topic, 4)
	s.mu.Lock()
	s.noRenew = true // read by keepLocks under mu
	s.mu.Unlock()
	d, err := readWithin(t, s, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Fenced:
	case <-time.After(lock):
		t.Fatalf("not fenced within the lock's %s", lock)
	}
	other := newShareSource(t, brokers, topic, 4)
	got := collect(t, other, 4*lock)
	r, ok := got[d.ID]
	if !ok || r.DeliveryCount < 1 || !r.Redelivered {
		t.Fatalf("the expired record at the other member: %v %+v", ok, r)
	}
	d.Settle(nil) // late: the lock is gone, and the source must not wait for it forever
}

// TestShareDroppedIsRejected: a delivery the gate dropped (Settle(nil) after MarkDropped)
// is rejected, so the broker archives it as unprocessable; a completed one is accepted and
// one not done is released.
func TestShareDroppedIsRejected(t *testing.T) {
	brokers := newShareCluster(t, 5*time.Second)
	topic := "share-reject"
	shareTopic(t, brokers, topic, 3)
	s := newShareSource(t, brokers, topic, 3)
	var mu sync.Mutex
	got := map[string]kgo.AckStatus{}
	s.mu.Lock()
	s.ackWith = func(r *kgo.Record, st kgo.AckStatus) {
		mu.Lock()
		defer mu.Unlock()
		got[string(r.Headers[0].Value)] = st
		r.Ack(st)
	}
	s.mu.Unlock()
	for range 3 {
		d, err := readWithin(t, s, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		switch d.ID {
		case "m0":
			d.Settle(nil)
		case "m1":
			d.MarkDropped()
			d.Settle(nil)
		default:
			d.Settle(adapters.ErrNotDone)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if got["m0"] != kgo.AckAccept || got["m1"] != kgo.AckReject || got["m2"] != kgo.AckRelease {
		t.Fatalf("acknowledgements %v, want m0 accept (%v), m1 reject (%v), m2 release (%v)", got, kgo.AckAccept, kgo.AckReject, kgo.AckRelease)
	}
}
