package kafka

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// TestWavesReleaseALoneRecordAtOnceAndHoldTheRestForTheNextWave: a record produced while
// nothing released is unanswered is released at once (a lone publish never waits for the
// linger); records produced while a wave is unanswered are held, and all released together
// when its last record is answered; a record answered before it was counted, or while
// held, is uncounted.
func TestWavesReleaseALoneRecordAtOnceAndHoldTheRestForTheNextWave(t *testing.T) {
	releases := make(chan struct{}, 10)
	g := &waves{release: func() { releases <- struct{}{} }}
	released := func(want bool) {
		t.Helper()
		select {
		case <-releases:
			if !want {
				t.Fatal("released, want held")
			}
		case <-time.After(50 * time.Millisecond):
			if want {
				t.Fatal("not released")
			}
		}
	}
	var a, b, c, d, e waveRec
	g.produced(&a)
	released(true)
	g.produced(&b)
	g.produced(&c)
	released(false)
	if g.sending != 1 || g.held != 2 {
		t.Fatalf("sending %d held %d, want 1 and 2", g.sending, g.held)
	}
	g.finished(&c) // a held record answered early (its context ended, say)
	released(false)
	g.finished(&a) // the wave's last record: the held one leaves
	released(true)
	if g.sending != 1 || g.held != 0 {
		t.Fatalf("sending %d held %d, want 1 and 0", g.sending, g.held)
	}
	g.finished(&d) // answered before produced counted it (failed before buffering)
	g.produced(&d)
	if g.sending != 1 || g.held != 0 {
		t.Fatalf("an answered record was counted: sending %d held %d", g.sending, g.held)
	}
	g.finished(&b)
	released(false) // nothing held: no release
	g.produced(&e)
	released(true)
}

// TestPublishesArrivingDuringAProduceLeaveInOneRequest: while kfake holds the produce
// request of one publish, 15 more publishes are held by the waves (franz-go alone would
// send them in up to four more requests at once); when it answers they leave in one
// produce request, and each gets its own offset. The fallback linger is set to a minute
// here, so a record the waves failed to release would not leave within the test.
func TestPublishesArrivingDuringAProduceLeaveInOneRequest(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(8, "t"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cfg := Defaults()
	cfg.Brokers = c.ListenAddrs()
	p, err := NewPublisher(cfg, 30*time.Second, WithPublisherLogger(testLogger(t)), WithPublisherClientOptions(kgo.ProducerLinger(time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- p.Run(rctx) }()
	t.Cleanup(func() { stop(); <-ran })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m := adapters.OutMessage{Topic: "t", ID: "id", Payload: []byte("x")}
	// The producer ID and the topic's partitions: a record produced before those are known
	// lingers (the fallback, a minute here) once its partition is known; Flush stops that.
	warm := make(chan error, 1)
	go func() { _, err := p.Publish(ctx, m); warm <- err }()
	for done := false; !done; {
		select {
		case err := <-warm:
			if err != nil {
				t.Fatal(err)
			}
			done = true
		case <-time.After(time.Millisecond):
			_ = p.cl.Flush(doneCtx)
		}
	}

	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		once.Do(func() { close(held); c.SleepControl(func() { <-release }) })
		return nil, nil, false
	})
	before := p.writes.Load()
	const n = 16
	offsets := make(chan int64, n)
	publish := func() {
		rc, err := p.Publish(ctx, m)
		if err != nil {
			offsets <- -1 // reported below
			return
		}
		offsets <- int64(*rc.Partition)<<40 | *rc.Offset
	}
	go publish()
	<-held
	for range n - 1 {
		go publish()
	}
	for {
		p.waves.mu.Lock()
		h := p.waves.held
		p.waves.mu.Unlock()
		if h == n-1 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d publishes held, want %d", h, n-1)
		}
		time.Sleep(time.Millisecond)
	}
	if w := p.writes.Load() - before; w != 1 {
		t.Fatalf("%d produce requests written while the first was unanswered, want 1", w)
	}
	close(release)
	seen := map[int64]bool{}
	for range n {
		o := <-offsets
		if o < 0 || seen[o] {
			t.Fatalf("a publish failed (-1) or repeated a receipt: %d", o)
		}
		seen[o] = true
	}
	if w := p.writes.Load() - before; w != 2 {
		t.Fatalf("%d produce requests for %d publishes, want 2 (the first, then the 15 held meanwhile)", w, n)
	}
}
