package adaptertest

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle"
)

// TestSuiteOnMemoryBroker runs the suite against a tiny in-memory queue broker with
// RabbitMQ-like semantics (requeue on not-done and on disconnect), so the suite itself is
// exercised by the unit tests and stays runnable without a real broker.
func TestSuiteOnMemoryBroker(t *testing.T) {
	b := &memBroker{queues: map[string][]*memMsg{}, changed: make(chan struct{})}
	Run(t, Harness{
		Name: "memory",
		Features: Features{Ordered: true, DeadLetter: true, SelectiveAck: true, Redelivered: true, Keys: true,
			Timeout: 5 * time.Second, QuietPeriod: 200 * time.Millisecond},
		Setup: func(t *testing.T, dest string) string { return dest + ".dlq" },
		NewSource: func(t *testing.T, dest, deadLetter string) adapters.Source {
			return &memSource{b: b, dest: dest, dl: deadLetter, closed: make(chan struct{}), unacked: map[*memMsg]bool{}}
		},
		Produce: func(t *testing.T, dest string, msgs ...Message) {
			for _, m := range msgs {
				b.push(dest, &memMsg{m: m}, false)
			}
		},
		ReadDeadLetters: func(t *testing.T, deadLetter string, n int) []Message {
			deadline := time.Now().Add(5 * time.Second)
			for {
				b.mu.Lock()
				q := b.queues[deadLetter]
				b.mu.Unlock()
				if len(q) >= n || time.Now().After(deadline) {
					out := make([]Message, len(q))
					for i, m := range q {
						out[i] = m.m
					}
					return out
				}
				time.Sleep(10 * time.Millisecond)
			}
		},
		Kill: func(t *testing.T, src adapters.Source) { src.(*memSource).disconnect() },
	})
}

type memMsg struct {
	m           Message
	redelivered bool
}

// memBroker holds FIFO queues; changed is closed and replaced on every push.
type memBroker struct {
	mu      sync.Mutex
	queues  map[string][]*memMsg
	changed chan struct{}
}

func (b *memBroker) push(dest string, m *memMsg, front bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if front {
		b.queues[dest] = append([]*memMsg{m}, b.queues[dest]...)
	} else {
		b.queues[dest] = append(b.queues[dest], m)
	}
	close(b.changed)
	b.changed = make(chan struct{})
}

type memSource struct {
	b    *memBroker
	dest string
	dl   string

	mu        sync.Mutex
	unacked   map[*memMsg]bool
	closed    chan struct{}
	closeOnce sync.Once
	gone      bool // disconnected: settlements no longer reach the broker
	life      lifecycle.Loop
}

// Run has no loop to run: it waits for Close, and closes the source when ctx ends.
func (s *memSource) Run(ctx context.Context) error {
	return s.life.Run(ctx, func() { _ = s.Close(context.Background()) }, func() error { <-s.closed; return nil })
}

func (s *memSource) Read(ctx context.Context) (*adapters.Delivery, error) {
	for {
		select {
		case <-s.closed:
			return nil, adapters.ErrClosed
		default:
		}
		s.b.mu.Lock()
		changed := s.b.changed
		q := s.b.queues[s.dest]
		if len(q) > 0 {
			m := q[0]
			s.b.queues[s.dest] = q[1:]
			s.b.mu.Unlock()
			s.mu.Lock()
			s.unacked[m] = true
			s.mu.Unlock()
			d := &adapters.Delivery{
				ID: m.m.ID, Payload: m.m.Payload, Headers: m.m.Headers, Key: m.m.Key,
				Source: "mem://" + s.dest, Lane: "mem://" + s.dest, Redelivered: m.redelivered,
			}
			d.Ack = func(err error) { s.settle(m, err) }
			return d, nil
		}
		s.b.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.closed:
			return nil, adapters.ErrClosed
		}
	}
}

func (s *memSource) settle(m *memMsg, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone || !s.unacked[m] {
		return
	}
	delete(s.unacked, m)
	if err != nil {
		s.b.push(s.dest, &memMsg{m: m.m, redelivered: true}, true)
	}
}

func (s *memSource) DeadLetter(ctx context.Context, d *adapters.Delivery, f adapters.Failure) error {
	if s.dl == "" {
		return adapters.ErrNoDeadLetter
	}
	c := Message{ID: d.ID, Payload: d.Payload, Headers: append(append([]adapters.Header{}, d.Headers...), adapters.FailureHeaders(d, f)...)}
	s.b.push(s.dl, &memMsg{m: c}, false)
	return nil
}

func (s *memSource) Ready() error {
	select {
	case <-s.closed:
		return adapters.ErrClosed
	default:
		return nil
	}
}

// disconnect is the broker noticing a dead consumer: unsettled messages are requeued.
func (s *memSource) disconnect() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone {
		return
	}
	s.gone = true
	for m := range s.unacked {
		s.b.push(s.dest, &memMsg{m: m.m, redelivered: true}, true)
	}
	s.unacked = nil
}

func (s *memSource) Close(ctx context.Context) error {
	first := false
	s.closeOnce.Do(func() { first = true })
	if !first {
		return adapters.ErrClosed
	}
	close(s.closed)
	s.disconnect()
	return nil
}

func TestDestName(t *testing.T) {
	n := destName("Rabbit MQ/quorum", strings.Repeat("x", 100))
	if len(n) > 80 {
		t.Fatalf("%q longer than 80", n)
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			t.Fatalf("%q has %q", n, r)
		}
	}
	if destName("a", "b") == destName("a", "b") {
		t.Fatal("names not unique")
	}
}
