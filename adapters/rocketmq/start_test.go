package rocketmq

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// freeAddr returns a loopback address nothing listens on (a port just released).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// readyAfterFirstAttempt returns Ready once Run's first start attempt is over (Ready no
// longer reports the state New left), failing after 10 s.
func readyAfterFirstAttempt(t *testing.T, s *Source) error {
	t.Helper()
	initial := s.Ready()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if err := s.Ready(); err == nil || initial == nil || err.Error() != initial.Error() {
			return err
		}
	}
	t.Fatalf("Ready still %v 10 s after Run started", initial)
	return nil
}

// A name server that is down at start: New succeeds, Ready names the unreachable name
// server, and Close during the start retries returns promptly.
func TestNewNameServerDown(t *testing.T) {
	ns := freeAddr(t)
	cfg := Defaults()
	cfg.Nameservers, cfg.Group, cfg.Topic = []string{ns}, "g-ns-down", "t-ns-down"
	s, err := New(cfg, "", WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatalf("New with the name server down: %v", err)
	}
	go func() { _ = s.Run(context.Background()) }() // Close ends it
	err = readyAfterFirstAttempt(t, s)
	want := "rocketmq: name server " + ns + " unreachable: "
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("Ready = %v, want it to start with %q", err, want)
	}
	t.Logf("Ready: %v", err)
	// Let at least one retry (1 s) run, then close in the middle of the backoff.
	time.Sleep(1500 * time.Millisecond)
	if err := s.Ready(); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("Ready after a retry = %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %s", d)
	}
	buf := make([]byte, 1<<20)
	if st := string(buf[:runtime.Stack(buf, true)]); strings.Contains(st, "rocketmq.(*Source).retryStart") {
		t.Errorf("the start retry goroutine still runs after Close:\n%s", st)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	if _, err := s.Read(ctx2); err == nil {
		t.Error("Read after Close returned no error")
	}
}

// A name server that answers but has no route for the topic: Ready says the topic does not
// exist (and that it is retried), not that the name server is unreachable.
func TestProbeTopicNotExist(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go fakeNameServer(l, 17, "No topic route info in name server for the topic: t")
	err = probeRoute([]string{l.Addr().String()}, "t", 2*time.Second)
	if err == nil || !errors.Is(err, ErrTopicNotExist) || errors.Is(err, ErrNameServerUnreachable) {
		t.Fatalf("probeRoute = %v, want ErrTopicNotExist", err)
	}
	for _, s := range []string{`topic "t" does not exist`, l.Addr().String(), "retried"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("probeRoute = %q, want it to contain %q", err, s)
		}
	}
}

// fakeNameServer answers every request on l with the response code and remark.
func fakeNameServer(l net.Listener, code int, remark string) {
	fakeRemoting(l, func(int) (int, string, []byte) { return code, remark, nil })
}

// fakeRemoting answers every request on l with what answer returns for its request code:
// response code, remark and body. A connection serves requests until the client closes it.
func fakeRemoting(l net.Listener, answer func(code int) (int, string, []byte)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			for {
				var n [4]byte
				if _, err := io.ReadFull(c, n[:]); err != nil {
					return
				}
				buf := make([]byte, binary.BigEndian.Uint32(n[:]))
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				hl := binary.BigEndian.Uint32(buf[0:4]) & 0xFFFFFF
				var req struct {
					Code   int   `json:"code"`
					Opaque int32 `json:"opaque"`
				}
				if err := json.Unmarshal(buf[4:4+hl], &req); err != nil {
					return
				}
				code, remark, body := answer(req.Code)
				header, _ := json.Marshal(map[string]any{"code": code, "remark": remark, "opaque": req.Opaque, "flag": responseFlag})
				frame := make([]byte, 8, 8+len(header)+len(body))
				binary.BigEndian.PutUint32(frame[0:4], uint32(4+len(header)+len(body)))
				binary.BigEndian.PutUint32(frame[4:8], uint32(len(header)))
				if _, err := c.Write(append(append(frame, header...), body...)); err != nil {
					return
				}
			}
		}()
	}
}
