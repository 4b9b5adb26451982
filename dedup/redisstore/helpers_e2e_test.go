//go:build e2e

package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
	"github.com/redis/go-redis/v9"
)

var quiet = slog.New(slog.DiscardHandler)

// harnessRedis returns the address of the shared harness Redis (e2e/harness/redis.sh). Unset:
// the test is skipped, except under CI=true, where not running it would hide a broken setup.
func harnessRedis(t testing.TB) string {
	t.Helper()
	addr := os.Getenv("MQSIDECAR_E2E_REDIS")
	if addr == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("MQSIDECAR_E2E_REDIS is not set, but CI=true: the Redis store tests must run in CI " +
				"(start e2e/harness/redis.sh and eval \"$(e2e/harness/all.sh env)\", as make test-e2e does)")
		}
		t.Skip("MQSIDECAR_E2E_REDIS not set (start e2e/harness/redis.sh start; eval \"$(e2e/harness/redis.sh env)\")")
	}
	return addr
}

// prefix is a key prefix of its own for one test, so tests sharing one Redis never meet.
func prefix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "mqsidecar:test:" + hex.EncodeToString(b[:]) + ":"
}

// open opens a store on addr with test defaults and runs it until the test ends; change
// adjusts the options.
func open(t testing.TB, addr, keyPrefix string, change func(*Options)) *Store {
	t.Helper()
	s := newStore(t, addr, keyPrefix, change)
	lifecycletest.Start(t, s.Run)
	return s
}

// newStore is open without Run (the conformance suite runs the store itself).
func newStore(t testing.TB, addr, keyPrefix string, change func(*Options)) *Store {
	t.Helper()
	o := Options{Addrs: []string{addr}, KeyPrefix: keyPrefix, TTL: time.Minute, Logger: quiet, Timeout: 2 * time.Second}
	if change != nil {
		change(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// server is a private redis-server for tests that stop, kill and restart it.
type server struct {
	t    testing.TB
	addr string
	dir  string
	args []string
	cmd  *exec.Cmd
}

// startServer starts redis-server on a free loopback port in a temporary directory,
// durable (appendonly yes, appendfsync always) unless args override it.
func startServer(t testing.TB, args ...string) *server {
	t.Helper()
	return startServerOn(t, freePort(t), args...)
}

// startServerOn is startServer on a given port.
func startServerOn(t testing.TB, port int, args ...string) *server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server not found, but CI=true: e2e/harness/redis.sh start installs it")
		}
		t.Skip("redis-server not found (e2e/harness/redis.sh start installs it)")
	}
	s := &server{t: t, addr: "127.0.0.1:" + strconv.Itoa(port), dir: t.TempDir()}
	s.args = append([]string{bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
		"--logfile", filepath.Join(s.dir, "redis.log")}, args...)
	s.start()
	t.Cleanup(func() { s.stop(true) })
	return s
}

func (s *server) start() {
	s.t.Helper()
	s.cmd = &exec.Cmd{Path: s.args[0], Args: s.args, Dir: s.dir, SysProcAttr: &syscall.SysProcAttr{Setpgid: true}}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: s.addr, MaxRetries: -1, DisableIdentity: true})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := ctxTimeout(time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil || redis.HasErrorPrefix(err, "NOAUTH") { // it answers (requirepass)
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.t.Fatalf("redis-server on %s not ready: %v\n%s", s.addr, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the server: SIGKILL (a crash) when kill, else SIGTERM (a clean shutdown).
func (s *server) stop(kill bool) {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	_ = s.cmd.Process.Signal(sig)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// client is a plain client to the server, for setup and inspection.
func client(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ctxTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// freePort returns a loopback port nobody listens on right now.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
