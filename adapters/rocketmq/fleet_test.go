package rocketmq

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// TestFencing drives the allocation strategy and the callback bridge without a broker
// (reservations off): a delivery of a queue the next rebalance takes away is fenced at once,
// its dead letter is refused as stale, and its "not done" verdict waits until the strategy
// returned (the client drops the queue right after); a delivery of a kept queue is not
// fenced; a message of a queue no longer allocated is not handed out at all.
func TestFencing(t *testing.T) {
	s, q0, q1, all := twoQueues(t)
	kept, lost := call(s, msgOn(q0, "kept")), call(s, msgOn(q1, "lost"))
	var dKept, dLost *adapters.Delivery
	for range 2 {
		d := readOne(t, s)
		if d.Fenced == nil || d.IsFenced() {
			t.Fatalf("%s: Fenced %v, want an open channel", d.ID, d.Fenced)
		}
		if d.ID == "kept" {
			dKept = d
		} else {
			dLost = d
		}
	}

	// "b" joins: AllocateByAveragely keeps q0 with "a" and gives q1 to "b".
	if got := s.allocate("g", "a", all, []string{"a", "b"}); len(got) != 1 || *got[0] != *q0 {
		t.Fatalf("with b: allocated %v, want [q0]", got)
	}
	if !dLost.IsFenced() {
		t.Error("delivery of the revoked queue not fenced")
	}
	if dKept.IsFenced() {
		t.Error("delivery of the kept queue fenced")
	}
	err := s.DeadLetter(context.Background(), dLost, adapters.Failure{Reason: "permanent", Time: time.Now()})
	if !errors.Is(err, adapters.ErrStaleDelivery) {
		t.Errorf("DeadLetter of a fenced delivery: %v, want ErrStaleDelivery", err)
	}
	dLost.Settle(adapters.ErrNotDone)
	if v := wait(t, lost); v.res != consumer.ConsumeRetryLater {
		t.Errorf("fenced, not done → %v, want ConsumeRetryLater (discarded by the client)", v.res)
	}
	dKept.Settle(nil)
	if v := wait(t, kept); v.res != consumer.ConsumeSuccess {
		t.Errorf("kept, done → %v, want ConsumeSuccess", v.res)
	}

	// A callback for q1 that starts after the revocation: not handed out.
	late := call(s, msgOn(q1, "late"))
	if v := wait(t, late); v.res != consumer.ConsumeRetryLater {
		t.Errorf("message of a revoked queue → %v, want ConsumeRetryLater", v.res)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if d, err := s.Read(ctx); err == nil {
		t.Errorf("Read handed out %s of a revoked queue", d.ID)
	}
}

// TestRevokedQueueWaitsForDrop: a callback for a message of a queue the running rebalance
// revoked starts before the client dropped the queue (the allocation strategy has not
// returned yet). The message is not handed out, and its "not done" verdict waits until the
// client dropped the queue (it reports the removal just after the strategy returned).
// Before, the client sent it back to the retry topic at once; that copy, pushed by the
// retry queue's owner, came beside the original that the queue's next owner read and could
// not know was pushed (the kill -9 fleet test: 86 IDs without ce-redelivered).
func TestRevokedQueueWaitsForDrop(t *testing.T) {
	s, _, q1, all := twoQueues(t)
	pc := &persistGate{entered: make(chan struct{}), release: make(chan struct{})}
	s.consumer = pc
	s.lastVerdict.Store(0)
	returned := make(chan struct{})
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(pc.release) }) }
	t.Cleanup(func() { release(); <-returned }) // runs before twoQueues' Close
	go func() {
		defer close(returned)
		s.allocate("g", "a", all, []string{"a", "b"}) // q1 goes to "b"
	}()
	select {
	case <-pc.entered: // the strategy persists offsets before it returns
	case <-time.After(5 * time.Second):
		t.Fatal("the revoking allocation never persisted offsets")
	}
	late := call(s, msgOn(q1, "late"))
	select {
	case v := <-late:
		t.Fatalf("verdict %v for the revoked queue's message before the client dropped the queue", v.res)
	case <-time.After(200 * time.Millisecond):
	}
	release()
	<-returned
	// The client marks the queue dropped just after the strategy returned, and then reports
	// that it removed it.
	select {
	case v := <-late:
		t.Fatalf("verdict %v for the revoked queue's message before the client reported the queue removed", v.res)
	case <-time.After(removalWait / 4):
	}
	logBridge{}.Info(queueRemovedLog, map[string]interface{}{"consumerGroup": s.group, "MessageQueue": q1.String()})
	start := time.Now()
	if v := wait(t, late); v.res != consumer.ConsumeRetryLater {
		t.Errorf("message of a revoked queue → %v, want ConsumeRetryLater (discarded by the client)", v.res)
	}
	if took := time.Since(start); took > removalWait/2 {
		t.Errorf("the verdict went back %s after the client's report, want at once", took)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if d, err := s.Read(ctx); err == nil {
		t.Errorf("Read handed out %s of a revoked queue", d.ID)
	}
}

// persistGate is a consumer whose PersistConsumerOffset, called by a revoking allocation
// just before it returns, waits until release is closed.
type persistGate struct {
	fakeConsumer
	entered, release chan struct{}
	once             sync.Once
}

func (p *persistGate) PersistConsumerOffset() error {
	p.once.Do(func() { close(p.entered) })
	<-p.release
	return nil
}

// twoQueues returns a bridge Source (no broker, reservations off) to which both queues of
// all were allocated, alone in its group as member "a".
func twoQueues(t *testing.T) (s *Source, q0, q1 *primitive.MessageQueue, all []*primitive.MessageQueue) {
	t.Helper()
	s = bridgeSource("concurrent", "topic")
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	s.hwmOff.Store(true)
	q0 = &primitive.MessageQueue{Topic: "orders", BrokerName: "broker-a", QueueId: 0}
	q1 = &primitive.MessageQueue{Topic: "orders", BrokerName: "broker-a", QueueId: 1}
	all = []*primitive.MessageQueue{q0, q1}
	if got := s.allocate("g", "a", all, []string{"a"}); len(got) != 2 {
		t.Fatalf("alone: allocated %d queues, want 2", len(got))
	}
	return s, q0, q1, all
}

// msgOn returns a message with UNIQ_KEY id on queue q.
func msgOn(q *primitive.MessageQueue, id string) *primitive.MessageExt {
	m := testMsg(map[string]string{"UNIQ_KEY": id}, "x")
	m.Queue = q
	return m
}

func TestDecodeMark(t *testing.T) {
	for _, tc := range []struct{ h, want int64 }{{-1, 0}, {0, 0}, {640, 640}, {640 | releasedMark, 640}, {640 | savedMark, 640}, {640 | markBits, 640}} {
		if got := decodeMark(tc.h); got != tc.want {
			t.Errorf("decodeMark(%d) = %d, want %d", tc.h, got, tc.want)
		}
	}
}

// TestVerdictsHeldDuringRevocation: while a rebalance revokes a queue, the verdict of a
// delivery of a kept queue stays in its callback (the client would record its offset at
// once, and forget it when it drops the revoked queue just after the strategy returned)
// until the client reports the revoked queue removed; the verdict of a revoked queue's
// delivery goes back at once (the client persists that queue's offset itself).
func TestVerdictsHeldDuringRevocation(t *testing.T) {
	s, q0, q1, all := twoQueues(t)
	kept, lost := call(s, msgOn(q0, "kept")), call(s, msgOn(q1, "lost"))
	ds := map[string]*adapters.Delivery{}
	for range 2 {
		d := readOne(t, s)
		ds[d.ID] = d
	}
	s.allocate("g", "a", all, []string{"a", "b"}) // q1 goes to "b"

	ds["lost"].Settle(nil)
	if v := wait(t, lost); v.res != consumer.ConsumeSuccess {
		t.Errorf("revoked queue, done → %v, want ConsumeSuccess", v.res)
	}
	ds["kept"].Settle(nil)
	select {
	case v := <-kept:
		t.Fatalf("the kept queue's verdict (%v) went back before the client removed the revoked queue", v.res)
	case <-time.After(removalWait / 4):
	}
	start := time.Now()
	logBridge{}.Info(queueRemovedLog, map[string]interface{}{"consumerGroup": s.group, "MessageQueue": q1.String()})
	if v := wait(t, kept); v.res != consumer.ConsumeSuccess {
		t.Errorf("kept queue, done → %v, want ConsumeSuccess", v.res)
	}
	if took := time.Since(start); took > removalWait/2 {
		t.Errorf("the kept queue's verdict went back %s after the client's report, want at once", took)
	}
}
