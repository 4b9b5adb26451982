package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// stopsignalInit is the line GODEBUG=inittrace=1 prints once package stopsignal has been
// initialized, i.e. once SIGTERM and SIGINT are caught.
const stopsignalInit = "init github.com/mqsidecar/mqsidecar/cmd/mqsidecar/internal/stopsignal "

// TestSIGTERMDuringStartup: a SIGTERM at any moment of start-up, from package
// initialization through config loading, opening the store and connecting, stops the
// sidecar with exit status 0 (never 143, death by the signal).
//
// The delays count from the moment the binary reports (GODEBUG=inittrace=1) that package
// stopsignal was initialized, not from exec: before that, in the first millisecond or two
// while the Go runtime and the standard library start, the runtime's default (die by the
// signal) applies, as for any Go program; measuring from exec would make the test depend on
// how fast this machine happens to be. 0 ms is the earliest moment the binary can promise.
func TestSIGTERMDuringStartup(t *testing.T) {
	bin := productionBinary(t)
	dir := t.TempDir()
	// A broker address where nothing listens: the sidecar starts and keeps trying.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	broker := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(dir, "sidecar.yaml")
	err = os.WriteFile(cfg, fmt.Appendf(nil, `source:
  kind: kafka
  kafka: {brokers: [%s], group: g, topics: [t]}
app: {url: "http://127.0.0.1:1/messages"}
dedup: {path: %q}
admin: {listen: "127.0.0.1:0"}
shutdown_timeout: 5s
`, broker, filepath.Join(dir, "dedup.db")), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	godebug := "inittrace=1"
	if v := os.Getenv("GODEBUG"); v != "" {
		godebug = v + ",inittrace=1"
	}
	for _, delay := range []time.Duration{0, 0, 0, time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond,
		5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 30 * time.Millisecond, 50 * time.Millisecond} {
		cmd := exec.Command(bin, "run", "--config", cfg)
		cmd.Env = append(os.Environ(), "GODEBUG="+godebug)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Read stderr up to the stopsignal line, then keep the rest (the sidecar's logs).
		var logs bytes.Buffer
		caught := make(chan bool, 1)
		copied := make(chan struct{})
		go func() {
			defer close(copied)
			r := bufio.NewReader(stderr)
			seen := false
			for {
				line, err := r.ReadString('\n')
				if !seen && strings.HasPrefix(line, stopsignalInit) {
					seen = true
					caught <- true
				} else if !strings.HasPrefix(line, "init ") {
					logs.WriteString(line)
				}
				if err != nil {
					if !seen {
						caught <- false
					}
					_, _ = io.Copy(&logs, r)
					return
				}
			}
		}()
		if !<-caught {
			_ = cmd.Wait()
			t.Fatalf("the binary never reported %q (GODEBUG=inittrace=1); exit %v, stderr:\n%s", stopsignalInit, cmd.ProcessState, logs.String())
		}
		time.Sleep(delay)
		start := time.Now()
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { <-copied; _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("SIGTERM %v after signals were caught: still running after 30 s; stderr:\n%s", delay, logs.String())
		}
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("SIGTERM %v after signals were caught: %v, want exit status 0; stderr:\n%s", delay, cmd.ProcessState, logs.String())
		} else {
			t.Logf("SIGTERM %v after signals were caught: exit 0 after %v", delay, time.Since(start).Round(time.Millisecond))
		}
	}
}
