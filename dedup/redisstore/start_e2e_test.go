//go:build e2e

package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqsidecar/mqsidecar/dedup"
)

// markInFlight queues the gate's admission Update for id; its result arrives on the channel.
func markInFlight(s *Store, id string) <-chan error {
	ch := make(chan error, 1)
	s.Update(id, func(dedup.Entry) (dedup.Entry, bool) {
		return dedup.Entry{State: dedup.InFlight, Attempts: 1}, true
	}, func(_ dedup.Entry, err error) { ch <- err })
	return ch
}

// noDone fails when ch delivers within d: nothing may complete while the store waits.
func noDone(t *testing.T, ch <-chan error, d time.Duration, s *Store) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("done(%v) while the store waits; Ready: %v", err, s.Ready())
	case <-time.After(d):
	}
}

func doneWithin(t *testing.T, ch <-chan error, d time.Duration, s *Store) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("done(%v), want nil", err)
		}
	case <-time.After(d):
		t.Fatalf("no done within %s; Ready: %v", d, s.Ready())
	}
}

// countingHandler counts log records at error level.
type countingHandler struct {
	slog.Handler
	errors *atomic.Int64
	mu     *sync.Mutex
	msgs   *[]string
}

func newCountingLogger() (*slog.Logger, *atomic.Int64, func() []string) {
	h := countingHandler{Handler: slog.DiscardHandler, errors: new(atomic.Int64), mu: new(sync.Mutex), msgs: new([]string)}
	return slog.New(h), h.errors, func() []string { h.mu.Lock(); defer h.mu.Unlock(); return append([]string(nil), *h.msgs...) }
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.errors.Add(1)
		msg := r.Message
		r.Attrs(func(a slog.Attr) bool { msg += " " + a.String(); return true })
		h.mu.Lock()
		*h.msgs = append(*h.msgs, msg)
		h.mu.Unlock()
	}
	return nil
}

func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }

// Redis not running at New: the store starts anyway, reports why it is not ready, holds an
// Update (no done, no error), and completes it once a server starts on that port.
func TestStartWithoutRedis(t *testing.T) {
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	s := open(t, addr, prefix(), func(o *Options) { o.Timeout = 300 * time.Millisecond })
	if err := s.Ready(); err == nil || !strings.Contains(err.Error(), "not connected yet") {
		t.Fatalf("Ready right after New: %v, want not connected yet", err)
	}
	waitFor(t, 5*time.Second, "Ready to name the connection error", func() bool {
		err := s.Ready()
		return err != nil && strings.Contains(err.Error(), "connection refused")
	})
	t.Logf("before Redis: Ready: %v", s.Ready())
	marked := markInFlight(s, "a1")
	put := make(chan error, 1)
	s.Put("a2", dedup.Entry{State: dedup.Completed, Attempts: 1}, func(err error) { put <- err })
	noDone(t, marked, time.Second, s)
	if _, err := s.Get("a1"); err == nil || !strings.Contains(err.Error(), "not connected yet") {
		t.Fatalf("Get before Redis: %v, want not connected yet", err)
	}

	startServerOn(t, port)
	doneWithin(t, marked, 10*time.Second, s)
	doneWithin(t, put, 5*time.Second, s)
	waitFor(t, 5*time.Second, "Ready", func() bool { return s.Ready() == nil })
	if e, err := s.Get("a1"); err != nil || e.State != dedup.InFlight {
		t.Fatalf("a1: %+v %v, want InFlight", e, err)
	}
	if e, err := s.Get("a2"); err != nil || e.State != dedup.Completed {
		t.Fatalf("a2: %+v %v, want Completed", e, err)
	}
}

// Close before the store ever connected ends at once: what is queued gets ErrClosed.
func TestCloseNeverConnected(t *testing.T) {
	s, err := New(Options{Addrs: []string{"127.0.0.1:" + strconv.Itoa(freePort(t))}, KeyPrefix: prefix(), TTL: time.Minute, Logger: quiet, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	go func() { _ = s.Run(t.Context()) }() // trying to connect until Close
	chs := []<-chan error{markInFlight(s, "c1"), markInFlight(s, "c2")}
	noDone(t, chs[0], 500*time.Millisecond, s)
	began := time.Now()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, ch := range chs {
		if err := <-ch; !errors.Is(err, dedup.ErrClosed) {
			t.Fatalf("after Close: %v, want ErrClosed", err)
		}
	}
	if d := time.Since(began); d > time.Second {
		t.Fatalf("Close took %s", d)
	}
	if err := s.Ready(); !errors.Is(err, dedup.ErrClosed) {
		t.Fatalf("Ready after Close: %v", err)
	}
}

// A server that is not durable as configured (appendfsync everysec, wait_replicas 0) is not
// accepted: the store starts, stays not ready naming the setting and the fix, logs that once
// at error level, completes nothing, and becomes ready once the server is fixed.
func TestStartNotDurable(t *testing.T) {
	srv := startServer(t, "--appendfsync", "everysec")
	logger, errorLogs, msgs := newCountingLogger()
	s := open(t, srv.addr, prefix(), func(o *Options) { o.Logger = logger; o.Timeout = 500 * time.Millisecond })
	waitFor(t, 5*time.Second, "Ready to name appendfsync", func() bool {
		err := s.Ready()
		return err != nil && strings.Contains(err.Error(), `appendfsync "everysec"`) && strings.Contains(err.Error(), "CONFIG SET appendfsync always")
	})
	t.Logf("Ready: %v", s.Ready())
	marked := markInFlight(s, "d1")
	noDone(t, marked, 2500*time.Millisecond, s) // a couple of rechecks
	if err := s.Ready(); err == nil || !strings.Contains(err.Error(), "appendfsync") {
		t.Fatalf("Ready: %v, want appendfsync still named", err)
	}
	if n := errorLogs.Load(); n != 1 {
		t.Fatalf("%d error log lines, want 1: %q", n, msgs())
	}
	if m := msgs()[0]; !strings.Contains(m, "appendfsync always") {
		t.Fatalf("error log %q does not name the fix", m)
	}

	c := client(t, srv.addr)
	ctx, cancel := ctxTimeout(2 * time.Second)
	defer cancel()
	if err := c.ConfigSet(ctx, "appendfsync", "always").Err(); err != nil {
		t.Fatal(err)
	}
	doneWithin(t, marked, 10*time.Second, s)
	waitFor(t, 5*time.Second, "Ready", func() bool { return s.Ready() == nil })

	// appendonly no is named too.
	if err := c.ConfigSet(ctx, "appendonly", "no").Err(); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, srv.addr, prefix(), nil)
	waitFor(t, 5*time.Second, "Ready to name appendonly", func() bool {
		err := s2.Ready()
		return err != nil && strings.Contains(err.Error(), `appendonly "no"`)
	})
}

// Credentials the server refuses: the store starts, stays not ready naming the refusal, logs
// it once at error level, completes nothing, and connects once the server accepts them.
func TestStartBadPassword(t *testing.T) {
	old := authRetry
	authRetry = 300 * time.Millisecond
	t.Cleanup(func() { authRetry = old })
	srv := startServer(t, "--requirepass", "right")
	logger, errorLogs, msgs := newCountingLogger()
	s := open(t, srv.addr, prefix(), func(o *Options) { o.Logger = logger; o.Password = "s3cret-bad"; o.Timeout = 500 * time.Millisecond })
	waitFor(t, 5*time.Second, "Ready to name the refusal", func() bool {
		err := s.Ready()
		return err != nil && strings.Contains(err.Error(), "WRONGPASS")
	})
	t.Logf("Ready: %v", s.Ready())
	marked := markInFlight(s, "p1")
	noDone(t, marked, 1500*time.Millisecond, s) // several retries
	if n := errorLogs.Load(); n != 1 {
		t.Fatalf("%d error log lines, want 1: %q", n, msgs())
	}
	if m := fmt.Sprint(msgs()); !strings.Contains(m, "WRONGPASS") || strings.Contains(m, "s3cret-bad") {
		t.Fatalf("error log %q: want WRONGPASS, and never the password", m)
	}

	// The operator fixes the server side (here: it accepts the password the store has).
	c := redis.NewClient(&redis.Options{Addr: srv.addr, Password: "right", DisableIdentity: true})
	defer c.Close()
	ctx, cancel := ctxTimeout(2 * time.Second)
	defer cancel()
	if err := c.ConfigSet(ctx, "requirepass", "s3cret-bad").Err(); err != nil {
		t.Fatal(err)
	}
	doneWithin(t, marked, 10*time.Second, s)
	waitFor(t, 5*time.Second, "Ready", func() bool { return s.Ready() == nil })
}
