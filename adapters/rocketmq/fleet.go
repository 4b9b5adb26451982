package rocketmq

import (
	"strings"
	"sync"
	"time"

	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// What the adapter does for a fleet (several sidecars in one consumer group); the package
// doc explains why.

const (
	// reserveStep is how far ahead of the message being handed out a reservation reaches;
	// one synchronous request to the broker per reserveStep messages of a queue.
	reserveStep = 64
	// hwmGroupSuffix names the reservation group: <group>-mqsidecar-hwm.
	hwmGroupSuffix = "-mqsidecar-hwm"
	// defaultHandoverGrace is how long a new owner of a queue holds back the messages below
	// the inherited reservation, see WithHandoverGrace.
	defaultHandoverGrace = 3 * time.Second
)

// closedFence is the Fenced channel of a message whose queue is no longer allocated to this
// source when its callback starts.
var closedFence = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()

// queueState is this source's view of one message queue allocated to it. A queue allocated
// again after a revocation gets a new queueState (a new fence, a new inherited mark).
type queueState struct {
	mq    primitive.MessageQueue
	fence chan struct{} // closed when the queue is revoked
	main  bool          // a queue of the subscribed topic (reservations apply), not %RETRY%

	// mu guards the fields below and is held across a reservation's round trip, so no
	// delivery of the queue is handed out beyond a reservation the broker has confirmed.
	mu        sync.Mutex
	addr      string    // the broker's address: the store host of the queue's messages
	inherited int64     // -1 until read; offsets below it may have been pushed by an earlier owner
	reserved  int64     // offsets below it may be pushed by this source (confirmed by the broker)
	holdUntil time.Time // deliveries below inherited are not handed out before this
}

// allocate is the client's allocation strategy (the client's default, AllocateByAveragely),
// wrapped to see which queues this source gains and loses. It runs in the client's rebalance
// just before the client drops the queues it no longer owns.
func (s *Source) allocate(group, clientID string, mqAll []*primitive.MessageQueue, cidAll []string) []*primitive.MessageQueue {
	res := consumer.AllocateByAveragely(group, clientID, mqAll, cidAll)
	if len(mqAll) == 0 {
		return res
	}
	topic := mqAll[0].Topic
	next := make(map[primitive.MessageQueue]*queueState, len(res))
	var revoked []string
	s.qmu.Lock()
	prev := s.alloc[topic]
	for _, mq := range res {
		if st := prev[*mq]; st != nil {
			next[*mq] = st
			continue
		}
		next[*mq] = &queueState{
			mq: *mq, fence: make(chan struct{}), inherited: -1,
			main: !strings.HasPrefix(mq.Topic, "%RETRY%"),
		}
	}
	for mq, st := range prev {
		if next[mq] == nil {
			// Fencing: the gate starts no new push of these deliveries from now on.
			close(st.fence)
			revoked = append(revoked, mqString(mq))
		}
	}
	s.alloc[topic] = next
	s.qmu.Unlock()
	if len(revoked) > 0 {
		s.log.Info("rocketmq queues revoked", "queues", revoked, "keeps", len(res))
		// The client's workaround, see "Offsets in a fleet" in the package doc: right after
		// this the client persists only the dropped queue and deletes every other queue's
		// offset from memory. Persist them all first.
		if p, ok := s.consumer.(interface{ PersistConsumerOffset() error }); ok {
			if err := p.PersistConsumerOffset(); err != nil {
				s.log.Warn("rocketmq: persisting offsets before a rebalance failed", "error", err)
			}
		}
	}
	return res
}

// queueOf returns the state of m's queue, closedFence's state (nil, fenced) when the queue is
// not allocated to this source (revoked), or nil, nil when allocations are unknown (no
// rebalance yet: unit tests with a fake consumer).
func (s *Source) queueOf(m *primitive.MessageExt) (*queueState, <-chan struct{}) {
	if m.Queue == nil {
		return nil, nil
	}
	s.qmu.Lock()
	defer s.qmu.Unlock()
	alloc, known := s.alloc[m.Queue.Topic]
	if !known {
		return nil, nil
	}
	st := alloc[*m.Queue]
	if st == nil {
		return nil, closedFence
	}
	return st, st.fence
}

// reserve makes sure the broker holds a reservation above m's offset before m is handed
// out, and reports whether m lies below what an earlier owner reserved (it may have been
// pushed already: the delivery is flagged redelivered) and until when it must be held back.
func (s *Source) reserve(st *queueState, m *primitive.MessageExt) (redelivered bool, holdUntil time.Time, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.addr == "" {
		st.addr = m.StoreHost
	}
	if !st.main || s.hwmOff.Load() {
		return false, time.Time{}, nil
	}
	off := m.QueueOffset
	if st.inherited < 0 {
		h, err := queryOffset(st.addr, s.hwmGroup, st.mq, s.creds)
		if err != nil {
			return false, time.Time{}, err
		}
		st.inherited, st.reserved = max(h, 0), max(h, 0)
		if st.inherited > 0 {
			st.holdUntil = time.Now().Add(s.handoverGrace)
		}
	}
	if off >= st.reserved {
		// Read before write: a reservation above ours means another member is handing out
		// this queue too (the client's rebalances are not coordinated); what it may have
		// pushed is flagged and held back like an inheritance.
		cur, err := queryOffset(st.addr, s.hwmGroup, st.mq, s.creds)
		if err != nil {
			return false, time.Time{}, err
		}
		if cur > st.reserved {
			s.log.Warn("rocketmq: another consumer reserved this queue meanwhile; its messages are flagged redelivered",
				"queue", mqString(st.mq), "ours", st.reserved, "theirs", cur)
			st.inherited = max(st.inherited, cur)
			st.holdUntil = time.Now().Add(s.handoverGrace)
		}
		want := max(off, cur) + reserveStep
		if err := s.commitReservation(st, want); err != nil {
			return false, time.Time{}, err
		}
		st.reserved = want
	}
	if off < st.inherited {
		return true, st.holdUntil, nil
	}
	return false, time.Time{}, nil
}

// commitReservation saves want as the reservation group's offset of st's queue; the first
// time the broker does not know the group, a heartbeat creates it. A broker that refuses
// to create it turns reservations off (logged): replays after a queue moves are then not
// flagged, as without this feature.
func (s *Source) commitReservation(st *queueState, want int64) error {
	err := commitOffset(st.addr, s.hwmGroup, st.mq, want, s.creds)
	if err == nil || !isGroupNotExist(err) {
		return err
	}
	if herr := announceGroup(st.addr, s.hwmGroup, s.instance+"-hwm", s.creds); herr != nil {
		return herr
	}
	err = commitOffset(st.addr, s.hwmGroup, st.mq, want, s.creds)
	if err != nil && isGroupNotExist(err) {
		s.hwmOff.Store(true)
		s.countError("broker")
		s.log.Error("rocketmq: the reservation group cannot be created (broker without autoCreateSubscriptionGroup?); "+
			"create it like the consumer group, else a completed message replayed after its queue moved to another sidecar is not flagged ce-redelivered",
			"group", s.hwmGroup, "error", err)
		return nil
	}
	return err
}

func isGroupNotExist(err error) bool {
	return err != nil && strings.Contains(err.Error(), errGroupNotExist.Error())
}

// admit prepares m's delivery d before it is handed out: its fence, and for a queue of the
// subscribed topic the reservation (retried until it succeeds, the queue is revoked or the
// source closes) and the flag and hold-back of what an earlier owner may have pushed. It
// returns false when d must not be handed out (fenced or closing).
func (s *Source) admit(m *primitive.MessageExt, d *adapters.Delivery) bool {
	st, fence := s.queueOf(m)
	d.Fenced = fence
	if st == nil {
		return fence == nil
	}
	for attempt := 1; ; attempt++ {
		red, hold, err := s.reserve(st, m)
		if err == nil {
			d.Redelivered = d.Redelivered || red
			if wait := time.Until(hold); wait > 0 {
				select {
				case <-time.After(wait):
				case <-st.fence:
					return false
				case <-s.closing:
					return false
				}
			}
			return !isClosed(st.fence)
		}
		s.countError("broker")
		if attempt == 1 || attempt%10 == 0 {
			s.log.Warn("rocketmq: reserving before a push failed; retrying", "queue", mqString(st.mq), "attempt", attempt, "error", err)
		}
		select {
		case <-time.After(min(time.Duration(attempt)*200*time.Millisecond, 2*time.Second)):
		case <-st.fence:
			return false
		case <-s.closing:
			return false
		}
	}
}
