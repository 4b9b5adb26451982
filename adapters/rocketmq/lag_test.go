package rocketmq

import (
	"log/slog"
	"net"
	"sync/atomic"
	"testing"

	"github.com/apache/rocketmq-client-go/v2/primitive"
)

// TestQueueLagAsksAFailingBrokerOnce: after a broker failed to answer for one queue, its
// other queues are not asked in the same report (each would wait for its own timeout) and
// are left out of it; the queues of other brokers are still asked.
func TestQueueLagAsksAFailingBrokerOnce(t *testing.T) {
	broker := func(conns *atomic.Int32) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				conns.Add(1)
				_ = c.Close() // no answer: the request fails
			}
		}()
		return ln.Addr().String()
	}
	var connsA, connsB atomic.Int32
	s := newSource(Settings{Topic: "orders", Group: "g"}, "", options{log: slog.New(slog.DiscardHandler)})
	s.addrs = map[string]string{"a": broker(&connsA), "b": broker(&connsB)}
	s.memOffsets = func() map[primitive.MessageQueue]int64 {
		return map[primitive.MessageQueue]int64{
			{Topic: "orders", BrokerName: "a", QueueId: 0}: 5, {Topic: "orders", BrokerName: "a", QueueId: 1}: 5,
			{Topic: "orders", BrokerName: "a", QueueId: 2}: 5, {Topic: "orders", BrokerName: "b", QueueId: 0}: 5,
		}
	}
	if lag := s.queueLag(); len(lag) != 0 {
		t.Fatalf("lag %v from brokers that do not answer", lag)
	}
	if a, b := connsA.Load(), connsB.Load(); a != 1 || b != 1 {
		t.Fatalf("connections: broker a %d (3 queues), b %d (1 queue); want 1 each", a, b)
	}
}
