//go:build e2e

package rabbitmq

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/adaptertest"
)

// TestConformance runs the shared adapter suite against the real broker: on classic
// queues with prefetch 16 (no order promised) and on quorum queues with prefetch 1 (queue
// order, x-delivery-count).
func TestConformance(t *testing.T) {
	variants := []struct {
		name      string
		queueType string
		prefetch  int
		features  adaptertest.Features
	}{
		{"classic", "classic", 16, adaptertest.Features{DeadLetter: true, SelectiveAck: true, Redelivered: true,
			Timeout: 15 * time.Second}},
		{"quorum-prefetch1", "quorum", 1, adaptertest.Features{DeadLetter: true, SelectiveAck: true, Redelivered: true,
			Ordered: true, MaxUnsettled: 1, Timeout: 15 * time.Second}},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			a := newAdmin(t)
			var mu sync.Mutex
			sources := map[adapters.Source]*testSource{}
			adaptertest.Run(t, adaptertest.Harness{
				Name:     "rabbitmq-" + v.name,
				Features: v.features,
				Setup: func(t *testing.T, dest string) string {
					a := a.with(t)
					a.queue(dest, amqp.Table{"x-queue-type": v.queueType})
					return a.dlx(dest + ".dlq")
				},
				NewSource: func(t *testing.T, dest, deadLetter string) adapters.Source {
					ts := open(t, dest, srcOpts{prefetch: v.prefetch, deadLetter: deadLetter, noRun: true})
					mu.Lock()
					sources[ts.Source] = ts
					mu.Unlock()
					return ts.Source
				},
				Produce: func(t *testing.T, dest string, ms ...adaptertest.Message) {
					a.with(t).publish(dest, ms...)
				},
				ReadDeadLetters: func(t *testing.T, deadLetter string, n int) []adaptertest.Message {
					queue := deadLetter[strings.IndexByte(deadLetter, '/')+1:]
					var out []adaptertest.Message
					for _, m := range a.with(t).get(queue, n, 15*time.Second) {
						out = append(out, adaptertest.Message{ID: m.MessageId, Payload: m.Body, Headers: headersOf(&m)})
					}
					return out
				},
				Kill: func(t *testing.T, src adapters.Source) {
					mu.Lock()
					ts := sources[src]
					mu.Unlock()
					ts.kill(ts.cut.cut)
				},
			})
		})
	}
}

// TestRecoveryNetworkCut cuts the consumer's TCP connection while messages flow: Ready
// goes down and up, consumption resumes by itself, settlements of the dead channel are
// dropped (never sent on the new one), their messages come back redelivered, and in the
// end the queue is empty with nothing unacknowledged.
func TestRecoveryNetworkCut(t *testing.T) {
	testRecovery(t, brokerURL(t), func(t *testing.T, ts *testSource) { ts.cut.cut() })
}

// TestRecoveryBrokerClose has the broker close the connections (rabbitmqctl
// close_all_connections on a private vhost), the path of a node shutdown or an operator
// action.
func TestRecoveryBrokerClose(t *testing.T) {
	u := vhost(t)
	name := u[strings.LastIndexByte(u, '/')+1:]
	testRecovery(t, u, func(t *testing.T, ts *testSource) {
		ctl(t, "close_all_connections", "--vhost", name, "--limit", "100", "mqsidecar e2e recovery test")
	})
}

// TestRecoveryBrokerRestart restarts the broker while messages flow (durable queue,
// persistent messages). It disrupts every user of the broker, so it only runs when
// MQSIDECAR_E2E_RABBITMQ_RESTART names the command that restarts it, e.g.
// "e2e/harness/rabbitmq.sh restart" (run from the repository root) or with --hard for a
// crash.
func TestRecoveryBrokerRestart(t *testing.T) {
	cmd := os.Getenv("MQSIDECAR_E2E_RABBITMQ_RESTART")
	if cmd == "" {
		t.Skip("MQSIDECAR_E2E_RABBITMQ_RESTART is not set (disruptive: restarts the shared broker)")
	}
	testRecovery(t, brokerURL(t), func(t *testing.T, ts *testSource) {
		c := exec.Command("sh", "-c", cmd)
		c.Dir = repoRoot()
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
	})
}

func testRecovery(t *testing.T, brokerURL string, disrupt func(*testing.T, *testSource)) {
	a := newAdminURL(t, brokerURL)
	q := uniqueName(t)
	a.queue(q, nil)
	const total = 300
	ms := msgs("rec", total)
	a.publish(q, ms...)
	ts := open(t, q, srcOpts{url: brokerURL, prefetch: 20})

	seen := map[string]int{}
	heldIDs := map[string]bool{}
	redelivered := map[string]bool{}
	var held []*adapters.Delivery
	disrupted := false
	for {
		timeout := 20 * time.Second
		if disrupted && len(seen) == total && len(redelivered) == len(heldIDs) {
			timeout = 1500 * time.Millisecond // only stragglers left: drain them
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		d, err := ts.Read(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) && timeout < 20*time.Second {
			break
		}
		if err != nil {
			t.Fatalf("Read: %v (seen %d of %d, held %d, redelivered %d)", err, len(seen), total, len(heldIDs), len(redelivered))
		}
		seen[d.ID]++
		if heldIDs[d.ID] && seen[d.ID] > 1 && d.Redelivered {
			redelivered[d.ID] = true
		}
		if !disrupted && seen[d.ID] == 1 && len(seen)%10 == 0 {
			held = append(held, d) // unsettled across the disruption
			heldIDs[d.ID] = true
		} else {
			d.Settle(nil)
		}
		if !disrupted && len(seen) == 100 {
			disrupted = true
			disrupt(t, ts)
			eventually(t, 60*time.Second, "connection lost and regained (Ready down then up)", func() bool {
				return ts.metrics.sawDownThenUp() && ts.Ready() == nil
			})
			// Settlements for the dead channel are dropped, not sent on the new one.
			stale := ts.metrics.count(EventStaleSettle)
			for _, h := range held {
				h.Settle(nil)
			}
			if n := ts.metrics.count(EventStaleSettle) - stale; n != len(held) {
				t.Fatalf("%d of %d late settlements counted stale", n, len(held))
			}
		}
	}
	for _, m := range ms {
		if seen[m.ID] == 0 {
			t.Errorf("%q never delivered", m.ID)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Anything still unacknowledged went back to the queue on Close.
	if n := a.count(q); n != 0 {
		t.Fatalf("%d messages left in the queue after everything was settled", n)
	}
	if logs := ts.logs.String(); strings.Contains(logs, "PRECONDITION_FAILED") || strings.Contains(logs, "unknown delivery tag") {
		t.Fatalf("an acknowledgement reached the wrong channel:\n%s", logs)
	}
	if ts.metrics.count(EventConnectionLost) < 1 {
		t.Fatal("connection loss not counted")
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	t.Logf("%d messages, %d held across the disruption, %d redeliveries in total, %d stale settlements",
		total, len(heldIDs), dups, ts.metrics.count(EventStaleSettle))
}

// TestPrefetchBoundsInflight: at most prefetch unsettled deliveries are handed out.
func TestPrefetchBoundsInflight(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t)
	a.queue(q, nil)
	a.publish(q, msgs("pf", 6)...)
	ts := open(t, q, srcOpts{prefetch: 3})
	var ds []*adapters.Delivery
	for range 3 {
		ds = append(ds, readOne(t, ts, 10*time.Second))
	}
	nothingWithin(t, ts, time.Second)
	ds[0].Settle(nil)
	readOne(t, ts, 10*time.Second)
}

// TestMissingQueue: without declare a missing queue is a clear, retried error; creating
// the queue is enough to recover.
func TestMissingQueue(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t)
	ts := open(t, q, srcOpts{})
	eventually(t, 10*time.Second, "Ready reports the missing queue", func() bool {
		return errors.Is(ts.Ready(), ErrQueueNotFound)
	})
	want := `queue "` + q + `" does not exist on vhost "/" (set source.rabbitmq.declare: true to create it)`
	if err := ts.Ready(); !strings.Contains(err.Error(), want) {
		t.Fatalf("Ready = %v, want it to contain %s", err, want)
	}
	nothingWithin(t, ts, 300*time.Millisecond)
	a.queue(q, nil)
	m := msgs("late", 1)
	a.publish(q, m...)
	d := readOne(t, ts, 15*time.Second)
	if d.ID != m[0].ID {
		t.Fatalf("got %q", d.ID)
	}
	d.Settle(nil)
	if err := ts.Ready(); err != nil {
		t.Fatalf("Ready = %v after recovery", err)
	}
}

// TestDeclare: declare: true creates a missing queue durable and uses an existing quorum
// queue as it is.
func TestDeclare(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t)
	t.Cleanup(func() { a.deleteQueue(q) })
	ts := open(t, q, srcOpts{declare: true})
	eventually(t, 10*time.Second, "ready", func() bool { return ts.Ready() == nil })
	if err := a.do(func(ch *amqp.Channel) error {
		// Redeclaring with durable=true succeeds only when the queue is durable.
		_, err := ch.QueueDeclare(q, true, false, false, false, nil)
		return err
	}); err != nil {
		t.Fatalf("declared queue is not durable: %v", err)
	}

	qq := uniqueName(t) + "-quorum"
	a.queue(qq, amqp.Table{"x-queue-type": "quorum"})
	ts2 := open(t, qq, srcOpts{declare: true})
	eventually(t, 10*time.Second, "ready on an existing quorum queue", func() bool { return ts2.Ready() == nil })
}

// TestConsumerCancel: deleting the queue under the consumer cancels it; the source
// re-subscribes (re-declaring with declare: true) and keeps consuming on the same channel.
func TestConsumerCancel(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t)
	t.Cleanup(func() { a.deleteQueue(q) })
	ts := open(t, q, srcOpts{declare: true})
	eventually(t, 10*time.Second, "ready", func() bool { return ts.Ready() == nil })
	a.publish(q, msgs("before", 1)...)
	held := readOne(t, ts, 10*time.Second)
	gen := ts.gen.Load()

	a.deleteQueue(q)
	eventually(t, 10*time.Second, "consumer cancellation noticed", func() bool {
		return ts.metrics.count(EventConsumerCancelled) >= 1
	})
	eventually(t, 10*time.Second, "re-subscribed", func() bool { return ts.Ready() == nil })
	m := msgs("after", 1)
	a.publish(q, m...)
	d := readOne(t, ts, 10*time.Second)
	if d.ID != m[0].ID {
		t.Fatalf("got %q, want %q", d.ID, m[0].ID)
	}
	d.Settle(nil)
	held.Settle(nil) // its queue is gone; acking it must not break the channel
	nothingWithin(t, ts, 500*time.Millisecond)
	if g := ts.gen.Load(); g != gen {
		t.Fatalf("reconnected (generation %d → %d); the channel should have survived the cancel", gen, g)
	}
	if !strings.Contains(ts.logs.String(), "consumer cancelled by the broker") {
		t.Fatal("cancellation not logged")
	}
}

// TestNackMode: dead_letter_mode nack rejects into the queue's own dead-letter exchange;
// the later Settle(nil) is a no-op.
func TestNackMode(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t)
	target := a.dlx(q + ".dlq")
	a.queue(q, amqp.Table{"x-dead-letter-exchange": "mqsc.dlx", "x-dead-letter-routing-key": q + ".dlq"})
	m := msgs("nack", 2)
	a.publish(q, m...)
	ts := open(t, q, srcOpts{mode: "nack"})
	d1 := readOne(t, ts, 10*time.Second)
	d2 := readOne(t, ts, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.DeadLetter(ctx, d1, adapters.Failure{Reason: "permanent"}); err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	d1.Settle(nil)
	d2.Settle(nil)
	got := a.get(strings.TrimPrefix(target, "mqsc.dlx/"), 1, 10*time.Second)
	if got[0].MessageId != d1.ID {
		t.Fatalf("dead letter %q, want %q", got[0].MessageId, d1.ID)
	}
	if _, ok := got[0].Headers["x-death"]; !ok {
		t.Fatalf("no x-death header: %v", got[0].Headers)
	}
	if err := ts.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := a.count(q); n != 0 {
		t.Fatalf("%d messages left in %s", n, q)
	}
	if ts.metrics.count(EventStaleSettle) != 0 {
		t.Fatal("a settlement was dropped")
	}
}

// TestDeadLetterFailures: an unroutable or missing target is an error and acknowledges
// nothing; the publisher recovers once the target is fixed.
func TestDeadLetterFailures(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t)
	a.queue(q, nil)
	a.must("declare exchange", func(ch *amqp.Channel) error {
		return ch.ExchangeDeclare("mqsc.dlx", "direct", true, false, false, false, nil)
	})
	m := msgs("dlfail", 2)
	a.publish(q, m...)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Missing exchange: the broker closes the confirm channel (404).
	missing := open(t, q, srcOpts{deadLetter: "mqsc-no-such-exchange/x"})
	d := readOne(t, missing, 10*time.Second)
	err := missing.DeadLetter(ctx, d, adapters.Failure{Reason: "permanent"})
	if !errors.Is(err, ErrNotConfirmed) || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Fatalf("DeadLetter to a missing exchange = %v", err)
	}
	if !strings.Contains(missing.logs.String(), "dead-letter exchange is not usable") {
		t.Error("missing dead-letter exchange not reported at connect")
	}
	d.Settle(adapters.ErrNotDone)
	if err := missing.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// Unroutable: mandatory publish comes back as a return.
	dlq := uniqueName(t) + ".dlq"
	src := open(t, q, srcOpts{deadLetter: "mqsc.dlx/" + dlq})
	d = readOne(t, src, 10*time.Second)
	err = src.DeadLetter(ctx, d, adapters.Failure{Reason: "permanent"})
	if !errors.Is(err, ErrNotConfirmed) || !strings.Contains(err.Error(), "unroutable") {
		t.Fatalf("DeadLetter unroutable = %v", err)
	}
	// Fix the topology: the same publisher now succeeds.
	a.queue(dlq, nil)
	a.must("bind", func(ch *amqp.Channel) error { return ch.QueueBind(dlq, dlq, "mqsc.dlx", false, nil) })
	if err := src.DeadLetter(ctx, d, adapters.Failure{Reason: "permanent"}); err != nil {
		t.Fatalf("DeadLetter after fixing the binding: %v", err)
	}
	d.Settle(nil)
	if got := a.get(dlq, 1, 10*time.Second); string(got[0].Body) != string(d.Payload) {
		t.Fatalf("dead letter body %q", got[0].Body)
	}
	if n := a.count(dlq); n != 0 {
		t.Fatalf("%d extra dead letters", n)
	}
	// The other message was never dead-lettered; it is still there after Close.
	if err := src.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := a.count(q); n != 1 {
		t.Fatalf("%d messages in the queue, want 1", n)
	}
}

// TestStaleDeadLetter: a delivery whose channel died is fenced, and neither dead-lettered
// nor acked.
func TestStaleDeadLetter(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t)
	target := a.dlx(q + ".dlq")
	a.queue(q, nil)
	a.publish(q, msgs("stale", 1)...)
	ts := open(t, q, srcOpts{deadLetter: target})
	d := readOne(t, ts, 10*time.Second)
	if d.IsFenced() {
		t.Fatal("fenced while its channel is open")
	}
	gen := ts.gen.Load()
	ts.cut.cut()
	eventually(t, 10*time.Second, "the old channel is noticed dead", func() bool { return ts.gen.Load() > gen })
	if !d.IsFenced() {
		t.Fatal("a delivery of a dead channel is not fenced")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.DeadLetter(ctx, d, adapters.Failure{Reason: "permanent"}); !errors.Is(err, ErrStaleDelivery) {
		t.Fatalf("DeadLetter of a stale delivery = %v, want ErrStaleDelivery", err)
	}
	d.Settle(nil)
	again := readOne(t, ts, 10*time.Second)
	if again.ID != d.ID || !again.Redelivered {
		t.Fatalf("redelivery %q redelivered=%v", again.ID, again.Redelivered)
	}
	again.Settle(nil)
	if n := a.count(strings.TrimPrefix(target, "mqsc.dlx/")); n != 0 {
		t.Fatalf("%d dead letters written for a stale delivery", n)
	}
}

// TestQuorumDeliveryCount: x-delivery-count feeds DeliveryCount.
func TestQuorumDeliveryCount(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t)
	a.queue(q, amqp.Table{"x-queue-type": "quorum"})
	a.publish(q, msgs("qdc", 1)...)
	ts := open(t, q, srcOpts{prefetch: 1})
	d := readOne(t, ts, 10*time.Second)
	if d.DeliveryCount != 0 || d.Redelivered {
		t.Fatalf("first delivery: count %d redelivered %v", d.DeliveryCount, d.Redelivered)
	}
	d.Settle(adapters.ErrNotDone)
	d = readOne(t, ts, 10*time.Second)
	if d.DeliveryCount != 1 || !d.Redelivered {
		t.Fatalf("after one requeue: count %d redelivered %v", d.DeliveryCount, d.Redelivered)
	}
	d.Settle(nil)
}

// TestHeaderMessageID: message_id header:<name>.
func TestHeaderMessageID(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t)
	a.queue(q, nil)
	m := msgs("hdr", 1)
	m[0].Headers = []adapters.Header{{Key: "x-msg-id", Value: "from-header"}}
	a.publish(q, m...)
	ts := open(t, q, srcOpts{messageID: "header:x-msg-id"})
	d := readOne(t, ts, 10*time.Second)
	if d.ID != "from-header" {
		t.Fatalf("ID %q", d.ID)
	}
	d.Settle(nil)
}

// TestNoGoroutineLeak opens and closes sources (consuming, acking, dead-lettering,
// surviving a cut) and checks the goroutine count returns to its baseline.
func TestNoGoroutineLeak(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t)
	target := a.dlx(q + ".dlq")
	a.queue(q, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Warm up once, so lazily started runtime goroutines are in the baseline.
	cycle := func(i int) {
		ts := open(t, q, srcOpts{deadLetter: target})
		ms := msgs("leak", 3)
		a.publish(q, ms...)
		for j := range 3 {
			d := readOne(t, ts, 10*time.Second)
			if j == 0 {
				if err := ts.DeadLetter(ctx, d, adapters.Failure{Reason: "permanent"}); err != nil {
					t.Fatal(err)
				}
			}
			d.Settle(nil)
		}
		if i%2 == 1 {
			gen := ts.gen.Load()
			ts.cut.cut()
			eventually(t, 10*time.Second, "reconnected", func() bool { return ts.gen.Load() > gen && ts.Ready() == nil })
		}
		if err := ts.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cycle(0)
	base := runtime.NumGoroutine()
	for i := 1; i <= 5; i++ {
		cycle(i)
	}
	var now int
	deadline := time.Now().Add(10 * time.Second)
	for {
		now = runtime.NumGoroutine()
		if now <= base+1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if now > base+1 {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines: %d after 5 cycles, baseline %d\n%s", now, base, buf[:runtime.Stack(buf, true)])
	}
}
