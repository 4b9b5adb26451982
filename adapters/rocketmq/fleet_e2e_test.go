//go:build e2e

package rocketmq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/primitive"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/adaptertest"
)

// Two Sources in one consumer group against the real broker: what a fleet of sidecars does
// to the adapter (fleet.go).

// savedOffsets returns, per queue of topic, group's saved offset (-1: none) and the queue's
// max offset.
func savedOffsets(t *testing.T, topic, group string, queues int) (saved, maxOff []int64) {
	t.Helper()
	_, broker := env(t)
	for q := range queues {
		mq := primitive.MessageQueue{Topic: topic, BrokerName: "broker-a", QueueId: q}
		off, err := queryOffset(broker, group, mq, primitive.Credentials{})
		if err != nil {
			t.Fatal(err)
		}
		r, err := invoke(broker, reqGetMaxOffset, map[string]string{"topic": topic, "queueId": strconv.Itoa(q)}, nil, primitive.Credentials{}, remotingTimeout)
		if err != nil || r.Code != resSuccess {
			t.Fatalf("max offset of %s/%d: %v %+v", topic, q, err, r)
		}
		m, _ := strconv.ParseInt(r.Ext["offset"], 10, 64)
		saved, maxOff = append(saved, off), append(maxOff, m)
	}
	return saved, maxOff
}

// keyed returns n messages with n different keys, so the hash selector spreads them over
// the queues.
func keyed(prefix string, n int) []adaptertest.Message {
	out := msgs(prefix, n, "")
	for i := range out {
		out[i].Key = fmt.Sprintf("k%d", i)
	}
	return out
}

// allocated returns how many queues of topic are allocated to s.
func allocated(s *Source, topic string) int {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	return len(s.alloc[topic])
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond) // polling the condition
	}
}

// TestFleetOffsetsAfterRevoke reproduces the client's offset-store bug and checks the
// workaround: A consumes both queues completely, B joins and takes one queue; the client's
// persist at that revocation deletes A's in-memory offset of the queue A keeps, which gets
// no further message. A stops cleanly before the client's first periodic persist (10 s
// after its start): the group's saved offsets must still reach the end of both queues.
func TestFleetOffsetsAfterRevoke(t *testing.T) {
	env(t)
	topic := fmt.Sprintf("fleet-off-%d", time.Now().UnixNano()%1e9)
	createTopic(t, topic, 2)
	ms := keyed("o", 40)
	produce(t, newProducer(t), topic, ms...)
	cfg := sourceConfig(t, topic, "concurrent", "topic")

	t0 := time.Now()
	a := open(t, cfg, "")
	for range ms {
		read(t, a, 30*time.Second).Settle(nil)
	}
	b := open(t, cfg, "")
	waitUntil(t, 20*time.Second, "A to lose one queue to B", func() bool { return allocated(a, topic) == 1 })
	closeSource(t, a)
	if took := time.Since(t0); took > 9*time.Second {
		t.Logf("A ran %s: the client's periodic persist (10 s after start) may have hidden the bug", took)
	}
	saved, maxOff := savedOffsets(t, topic, cfg.Group, 2)
	for q := range saved {
		if saved[q] != maxOff[q] {
			t.Errorf("queue %d: saved offset %d after A stopped cleanly, want %d (everything was completed)", q, saved[q], maxOff[q])
		}
	}
	closeSource(t, b)
}

// TestFleetFenceAndFlag: A holds deliveries of both queues unsettled when B joins. The
// deliveries of the queue A loses are fenced at once, and their dead-lettering is refused
// as stale; A abandons them, and B gets that queue's messages again, every one flagged
// redelivered (they lie below what A reserved before handing them out).
func TestFleetFenceAndFlag(t *testing.T) {
	env(t)
	topic := fmt.Sprintf("fleet-fence-%d", time.Now().UnixNano()%1e9)
	createTopic(t, topic, 2)
	ms := keyed("f", 12)
	produce(t, newProducer(t), topic, ms...)
	cfg := sourceConfig(t, topic, "concurrent", "topic")

	a := open(t, cfg, "dead-letters")
	var held []*adapters.Delivery
	for range ms {
		d := read(t, a, 30*time.Second)
		if d.Fenced == nil {
			t.Fatalf("%s: no Fenced channel", d.ID)
		}
		held = append(held, d)
	}
	b := open(t, cfg, "")
	var fenced []*adapters.Delivery
	waitUntil(t, 20*time.Second, "deliveries of A's revoked queue fenced", func() bool {
		fenced = fenced[:0]
		for _, d := range held {
			if d.IsFenced() {
				fenced = append(fenced, d)
			}
		}
		return len(fenced) > 0
	})
	moved := map[string]bool{}
	for _, d := range fenced {
		moved[d.ID] = true
	}
	err := a.DeadLetter(context.Background(), fenced[0], adapters.Failure{Reason: "permanent", Time: time.Now()})
	if !errors.Is(err, adapters.ErrStaleDelivery) {
		t.Errorf("DeadLetter of a fenced delivery: %v, want ErrStaleDelivery", err)
	}
	for _, d := range held {
		if !moved[d.ID] && d.IsFenced() {
			t.Errorf("%s: fenced although its queue stayed with A", d.ID)
		}
		if moved[d.ID] {
			// As the gate settles a fenced delivery that was not on the wire: abandoned.
			// (One whose push finished is settled done; whether that late acknowledgement
			// still reaches the broker before B reads the offset is a race, and either
			// outcome is correct, so this test does not rely on it.)
			d.Settle(adapters.ErrNotDone)
			continue
		}
		d.Settle(nil)
	}
	for len(moved) > 0 {
		d := read(t, b, 30*time.Second)
		if !moved[d.ID] {
			t.Fatalf("B got %s, not of the moved queue", d.ID)
		}
		if !d.Redelivered {
			t.Errorf("B got %s (queue %d offset %d) without the redelivered flag; A may have pushed it", d.ID, d.Partition, d.Offset)
		}
		delete(moved, d.ID)
		d.Settle(nil)
	}
	closeSource(t, a)
	closeSource(t, b)
}

// TestReservationTakeover: two members that both believe they own one queue (each
// rebalances from its own view of the group) must both flag what they hand out once the
// second took it over: the taker flags its whole first window, and the first owner, which
// reads the reservation every contendEvery, flags what it still hands out. Before, the first
// owner went on pushing its window unflagged while the taker pushed the same messages
// flagged, so the app could get the flagged copy first and the unflagged one after it.
func TestReservationTakeover(t *testing.T) {
	topic := fmt.Sprintf("e2e-takeover-%d", time.Now().UnixNano())
	createTopic(t, topic, 1)
	cfg := sourceConfig(t, topic, "concurrent", "topic")
	a := newSource(cfg, "", options{log: testLogger(t)})
	b := newSource(cfg, "", options{log: testLogger(t)})
	a.salt, b.salt = 1, 2
	mq := primitive.MessageQueue{Topic: topic, BrokerName: "broker-a", QueueId: 0}
	state := func() *queueState {
		return &queueState{mq: mq, fence: make(chan struct{}), epoch: make(chan struct{}), dropped: make(chan struct{}), inherited: -1,
			main: true, acquired: time.Now(), inheritDone: make(chan struct{})}
	}
	reserve := func(s *Source, st *queueState, off int64) bool {
		t.Helper()
		red, err := s.reserve(st, &primitive.MessageExt{Message: primitive.Message{Topic: topic, Queue: &mq}, QueueOffset: off})
		if err != nil {
			t.Fatalf("reserve offset %d: %v", off, err)
		}
		return red
	}

	sa := state()
	for off := range int64(10) {
		if reserve(a, sa, off) {
			t.Fatalf("the only owner flagged offset %d", off)
		}
	}
	sb := state()
	if !reserve(b, sb, 5) {
		t.Error("taking over a queue its owner did not release: offset 5 (inside the owner's window) not flagged")
	}
	if !reserve(b, sb, reserveStep+10) {
		t.Errorf("taking over a queue its owner did not release: offset %d (the taker's first window) not flagged", reserveStep+10)
	}
	time.Sleep(contendEvery + 100*time.Millisecond)
	if !reserve(a, sa, 10) {
		t.Error("the first owner went on handing out its window unflagged after another member took the queue over")
	}

	// A queue released by its owner is taken over without flags beyond what was reserved.
	a.release(sa, false)
	sc := state()
	c := newSource(cfg, "", options{log: testLogger(t)})
	c.salt = 3
	if reserve(c, sc, 3*reserveStep+10) {
		t.Error("a queue released by its owner: a message beyond every reservation was flagged")
	}
}

// TestRetryQueueHandover: a retry queue's next owner waits for its current owner's handover
// before the client reads the offset, also after earlier handovers left their marks (a
// retry queue is never reserved, so nothing else clears them). Without that wait the next
// owner read an offset the current owner had not saved yet and wrote it back: a fleet
// stopped cleanly left completed retry copies for the next sidecar.
func TestRetryQueueHandover(t *testing.T) {
	topic := fmt.Sprintf("e2e-retryhand-%d", time.Now().UnixNano())
	createTopic(t, topic, 1)
	cfg := sourceConfig(t, topic, "concurrent", "topic")
	mq := primitive.MessageQueue{Topic: "%RETRY%" + cfg.Group, BrokerName: "broker-a", QueueId: 0}
	createTopic(t, mq.Topic, 1) // as the broker does when the group's first member registers
	state := func() *queueState {
		return &queueState{mq: mq, fence: make(chan struct{}), epoch: make(chan struct{}), dropped: make(chan struct{}), inherited: -1,
			acquired: time.Now(), inheritDone: make(chan struct{})}
	}
	first := newSource(cfg, "", options{log: testLogger(t)})
	a := newSource(cfg, "", options{log: testLogger(t)})
	b := newSource(cfg, "", options{log: testLogger(t)})

	// An earlier owner handed the queue over (its marks stay), then a takes it.
	if !first.handOver(state(), nil) {
		t.Fatal("the first owner's handover failed")
	}
	sa := state()
	a.claimRetry([]*queueState{sa})

	// b gains the queue while a still holds it: b must wait for a's handover.
	done := make(chan time.Duration, 1)
	start := time.Now()
	go func() { b.awaitRelease([]*queueState{state()}); done <- time.Since(start) }()
	select {
	case took := <-done:
		t.Fatalf("the next owner read the retry queue's offset after %s, before its owner handed it over (an earlier handover's marks)", took)
	case <-time.After(300 * time.Millisecond):
	}
	if !a.handOver(sa, nil) {
		t.Fatal("the owner's handover failed")
	}
	select {
	case took := <-done:
		if took >= handoverWait {
			t.Errorf("the next owner waited %s, the whole handoverWait: the owner's mark went unseen", took)
		}
	case <-time.After(2 * handoverWait):
		t.Fatal("the next owner still waits after the owner's handover")
	}
}

// TestContentionFencesHeldDeliveries: A owns a queue and holds deliveries it handed out
// unflagged (a slow app, a full max_inflight); another member takes the queue over without
// A being told (each member rebalances from its own view). A must fence what it holds within
// a few contendEvery, so the gate does not push those unflagged copies after the taker's,
// and hand out what follows flagged. Without the watch A noticed only when it handed out
// the next message, which a full gate never asks for: a silent duplicate in the CI's fleet
// kill test.
func TestContentionFencesHeldDeliveries(t *testing.T) {
	env(t)
	topic := fmt.Sprintf("e2e-contend-%d", time.Now().UnixNano()%1e9)
	createTopic(t, topic, 1)
	ms := msgs("c", 3, "")
	produce(t, newProducer(t), topic, ms...)
	cfg := sourceConfig(t, topic, "concurrent", "topic")
	a := open(t, cfg, "")
	var held []*adapters.Delivery
	for range 3 {
		d := read(t, a, 30*time.Second)
		if d.Redelivered {
			t.Fatalf("%s flagged before any takeover", d.ID)
		}
		held = append(held, d)
	}
	for _, d := range held {
		if d.IsFenced() {
			t.Fatalf("%s fenced before any takeover", d.ID)
		}
	}

	// B takes the queue over in its own view: its first reservation, above A's.
	b := newSource(cfg, "", options{log: testLogger(t)})
	b.salt = 7
	mq := primitive.MessageQueue{Topic: topic, BrokerName: "broker-a", QueueId: int(held[0].Partition)}
	sb := &queueState{mq: mq, fence: make(chan struct{}), epoch: make(chan struct{}), dropped: make(chan struct{}), inherited: -1,
		main: true, acquired: time.Now(), inheritDone: make(chan struct{})}
	if _, err := b.reserve(sb, &primitive.MessageExt{Message: primitive.Message{Topic: topic, Queue: &mq}, QueueOffset: held[0].Offset}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*contendEvery, "A to fence the deliveries it held", func() bool {
		for _, d := range held {
			if !d.IsFenced() {
				return false
			}
		}
		return true
	})
	for _, d := range held {
		d.Settle(adapters.ErrNotDone)
	}
	// Deliveries admitted before the takeover (waiting for Read) carry the closed epoch;
	// what A admits after it carries a fresh one and the flag.
	produce(t, newProducer(t), topic, msgs("later", 3, "")...)
	for {
		d := read(t, a, 30*time.Second)
		t.Logf("read %s offset %d fenced %t redelivered %t count %d", d.ID, d.Offset, d.IsFenced(), d.Redelivered, d.DeliveryCount)
		if d.IsFenced() {
			if d.Redelivered {
				t.Errorf("%s: fenced although admitted (flagged) after the takeover", d.ID)
			}
			d.Settle(adapters.ErrNotDone)
			continue
		}
		if !d.Redelivered {
			t.Errorf("%s handed out unfenced after the takeover without the flag", d.ID)
		}
		d.Settle(nil)
		break
	}
	closeSource(t, a)
}

// TestFleetOffsetsRecordedDuringRebalance: the offset a member records for a queue it keeps
// while a rebalance revokes others survives the client's offset-store bug. A rebalance
// that revokes queues makes the client forget every other queue's offset in memory just
// after the strategy returns; the adapter persists them all first, but a verdict the client
// recorded after that persist was gone, and a queue that got no further message kept its
// older offset for good: in the CI's rolling fleet test with the shared store, completed
// retry copies came back to the next sidecar. Here A keeps queue 2 while B's join revokes
// queues 0 and 1 and hands it queue 3, whose earlier owner left no handover mark, so A's
// rebalance waits handoverWait; A completes its held deliveries of queue 2 meanwhile, then
// stops cleanly: queue 2's saved offset must reach its end.
func TestFleetOffsetsRecordedDuringRebalance(t *testing.T) {
	_, broker := env(t)
	topic := fmt.Sprintf("fleet-rec-%d", time.Now().UnixNano()%1e9)
	createTopic(t, topic, 6)
	cfg := sourceConfig(t, topic, "concurrent", "topic")
	member := func(instance string, noReservations bool) *Source {
		c := cfg
		c.InstanceName = topic + "-" + instance // client IDs sort by it: b, a, c → [a b c]
		return openWith(t, c, "", func(s *Source) { s.hwmOff.Store(noReservations) })
	}
	a := member("b", false)
	// C never reserves nor marks (as with a broker that refuses the reservation group), so
	// the reservation written below for queue 3 stays unreleased.
	c := member("c", true)
	waitUntil(t, 20*time.Second, "A and C to share the queues", func() bool { return allocated(a, topic) == 3 && allocated(c, topic) == 3 })

	ms := keyed("r", 36)
	produce(t, newProducer(t), topic, ms...)
	_, maxOff := savedOffsets(t, topic, cfg.Group, 6)
	if maxOff[2] == 0 {
		t.Fatalf("no message landed on queue 2 (%v)", maxOff)
	}
	var held []*adapters.Delivery
	for range maxOff[0] + maxOff[1] + maxOff[2] {
		d := read(t, a, 30*time.Second)
		if d.Partition == 2 {
			held = append(held, d)
			continue
		}
		d.Settle(nil)
	}
	for range maxOff[3] + maxOff[4] + maxOff[5] {
		read(t, c, 30*time.Second).Settle(nil)
	}
	// A member killed with -9 had reserved queue 3: no handover mark.
	q3 := primitive.MessageQueue{Topic: topic, BrokerName: "broker-a", QueueId: 3}
	if err := commitOffset(broker, cfg.Group+hwmGroupSuffix, q3, 5, primitive.Credentials{}); err != nil {
		t.Fatal(err)
	}

	b := member("a", false) // [B A C]: A keeps 2, loses 0 and 1 to B, gains 3 from C
	waitUntil(t, 20*time.Second, "A's rebalance to start", func() bool { return allocated(a, topic) == 2 })
	for _, d := range held {
		d.Settle(nil) // while A's rebalance waits for queue 3's handover
	}
	time.Sleep(handoverWait + removalWait) // the rebalance ends
	closeSource(t, a)
	saved, _ := savedOffsets(t, topic, cfg.Group, 6)
	if saved[2] != maxOff[2] {
		t.Errorf("queue 2: saved offset %d after A stopped cleanly, want %d: %d deliveries completed during the rebalance were recorded by the client and forgotten",
			saved[2], maxOff[2], len(held))
	}
	closeSource(t, b)
	closeSource(t, c)
}
