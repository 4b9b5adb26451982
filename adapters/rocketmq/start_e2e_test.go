//go:build e2e

package rocketmq

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters/adaptertest"
)

// forwardLater listens on addr after delay and forwards every connection to target; it
// stops (listener and connections) at the end of the test.
func forwardLater(t *testing.T, addr, target string, delay time.Duration) {
	t.Helper()
	var (
		mu    sync.Mutex
		l     net.Listener
		conns []net.Conn
		done  bool
	)
	timer := time.AfterFunc(delay, func() {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("forwarder: listen on %s: %v", addr, err)
			return
		}
		mu.Lock()
		if done {
			mu.Unlock()
			ln.Close()
			return
		}
		l = ln
		mu.Unlock()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	})
	t.Cleanup(func() {
		timer.Stop()
		mu.Lock()
		defer mu.Unlock()
		done = true
		if l != nil {
			l.Close()
		}
		for _, c := range conns {
			c.Close()
		}
	})
}

// The name server comes up after the source started: New succeeds, Ready names the
// unreachable name server, and once it answers the consumer starts and messages flow.
func TestStartNameServerLater(t *testing.T) {
	ns, _ := env(t)
	topic := fmt.Sprintf("nslater-%d", time.Now().UnixNano())
	createTopic(t, topic, 2)
	addr := freeAddr(t)
	cfg := sourceConfig(t, topic, "concurrent", "topic")
	cfg.Nameservers = []string{addr}
	s := open(t, cfg, "")
	want := "rocketmq: name server " + addr + " unreachable: "
	if err := readyAfterFirstAttempt(t, s); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("Ready = %v, want it to start with %q", err, want)
	} else if !errors.Is(err, ErrNameServerUnreachable) {
		t.Fatalf("Ready = %v, not ErrNameServerUnreachable", err)
	}
	forwardLater(t, addr, ns, 3*time.Second)

	produced := msgs("nslater", 5, "")
	produce(t, newProducer(t), topic, produced...)
	expectFlow(t, s, produced)
}

// The topic is created after the source started: Ready says it does not exist (not that the
// name server is unreachable), and once it exists the consumer starts and messages flow.
func TestStartTopicLater(t *testing.T) {
	env(t)
	topic := fmt.Sprintf("topiclater-%d", time.Now().UnixNano())
	s := open(t, sourceConfig(t, topic, "concurrent", "topic"), "")
	err := readyAfterFirstAttempt(t, s)
	if err == nil || !errors.Is(err, ErrTopicNotExist) || errors.Is(err, ErrNameServerUnreachable) ||
		!strings.Contains(err.Error(), fmt.Sprintf("topic %q does not exist", topic)) {
		t.Fatalf("Ready = %v, want the topic does not exist", err)
	}
	t.Logf("Ready before the topic exists: %v", err)
	time.Sleep(2 * time.Second)
	createTopic(t, topic, 2)
	produced := msgs("topiclater", 5, "")
	produce(t, newProducer(t), topic, produced...)
	expectFlow(t, s, produced)
}

// expectFlow reads and settles every produced message (in any order), then waits for Ready.
func expectFlow(t *testing.T, s *Source, produced []adaptertest.Message) {
	t.Helper()
	want := map[string]bool{}
	for _, m := range produced {
		want[m.ID] = true
	}
	for len(want) > 0 {
		d := read(t, s, 90*time.Second)
		if !want[d.ID] {
			t.Logf("unexpected or repeated message %q", d.ID)
		}
		delete(want, d.ID)
		d.Settle(nil)
	}
	deadline := time.Now().Add(20 * time.Second)
	for s.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("Ready after messages flowed: %v", s.Ready())
		}
		time.Sleep(200 * time.Millisecond) // polling with a deadline
	}
	closeSource(t, s)
}
