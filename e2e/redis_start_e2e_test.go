//go:build e2e

package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// redisStartConfig is the e2e Kafka sidecar config (kafkaConfig) with the shared dedup
// store on redisAddr.
func redisStartConfig(t *testing.T, brokers []string, topic, group, appURL, redisAddr string) *sidecarConfig {
	yaml := kafkaConfig{brokers: brokers, topic: topic, group: group, appURL: appURL,
		dedupPath: filepath.Join(t.TempDir(), "unused.db")}.yaml()
	return newSidecarConfig(t, "sidecar", yaml,
		"MQSIDECAR_DEDUP_STORE=redis", "MQSIDECAR_DEDUP_REDIS_ADDRS="+redisAddr,
		"MQSIDECAR_DEDUP_REDIS_KEY_PREFIX="+redisKeyPrefix(), "MQSIDECAR_DEDUP_REDIS_TIMEOUT=500ms",
		"MQSIDECAR_DEDUP_TTL=1h", "MQSIDECAR_SHUTDOWN_TIMEOUT=2s")
}

// startRedisOn starts a durable redis-server on addr (127.0.0.1:port); the test's cleanup
// kills it. It returns once the port accepts connections.
func startRedisOn(t *testing.T, addr string) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server not found, but CI=true: e2e/harness/redis.sh start installs it")
		}
		t.Skip("redis-server not found (e2e/harness/redis.sh start installs it)")
	}
	_, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--dir", dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
		"--logfile", filepath.Join(dir, "redis.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitFor(t, 10*time.Second, "redis-server on "+addr, func() (bool, string) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})
}

func redisKeyPrefix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "mqsidecar:e2e:start:" + hex.EncodeToString(b[:]) + ":"
}

// TestRedisE2EDownAtStart: the shared store's Redis is not running when the sidecar starts.
// The sidecar must not exit (no crash loop): it runs, /readyz answers 503 naming the store,
// nothing is pushed, and once Redis is up it delivers everything by itself. A SIGTERM while
// it waits for Redis exits 0 within the shutdown timeout.
func TestRedisE2EDownAtStart(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil && os.Getenv("CI") != "true" {
		t.Skip("redis-server not found (e2e/harness/redis.sh start installs it)")
	}
	const topic, n = "orders", 200
	brokers := newKfake(t, topic, 4)
	k := newKafkaEnv(t, "kfake", brokers, topic, "e2e-redis-start")
	msgs := make([]message, n)
	for i := range msgs {
		msgs[i] = message{ID: fmt.Sprintf("r-%04d", i), Key: fmt.Sprintf("k%02d", i%8), Partition: -1}
	}
	k.mustProduce(msgs...)

	waitStore := func(t *testing.T, p *sidecarProc) {
		t.Helper()
		waitFor(t, 30*time.Second, "/readyz 503 naming the dedup store", func() (bool, string) {
			if !p.running() {
				p.fatalf("exited while Redis was down (%s): a crash loop under Kubernetes", p.exitString())
			}
			ok, why := p.readyz()
			return !ok && strings.HasPrefix(why, "503") && strings.Contains(why, "dedup store") &&
				strings.Contains(why, "not connected yet"), why
		}, func() string { return p.logTail(20) })
	}

	t.Run("delivers once Redis is up", func(t *testing.T) {
		app := newRecApp(t, 0, 0)
		redisAddr := freeAddr(t)
		cfg := redisStartConfig(t, brokers, topic, "g-up", app.url(), redisAddr)
		p := cfg.startNoWait()
		waitStore(t, p)
		time.Sleep(2 * time.Second) // the messages are read and wait for their in-flight record
		if !p.running() {
			p.fatalf("exited while Redis was down")
		}
		if ok, why := p.readyz(); ok || !strings.Contains(why, "connection refused") {
			p.fatalf("/readyz %s, want 503 with the connection error", why)
		} else {
			t.Logf("while Redis is down: /readyz %s", why)
		}
		if s := app.stats(); s.Pushes != 0 {
			p.fatalf("%d pushes while the store was not connected", s.Pushes)
		}
		if v, err := p.metric("mqsidecar_messages_acked_total"); err != nil || v != 0 {
			p.fatalf("acked %v (%v) while the store was not connected", v, err)
		}

		startRedisOn(t, redisAddr)
		app.waitDelivered(t, n, 60*time.Second, func() string { return p.logTail(30) })
		if err := p.waitReady(30 * time.Second); err != nil {
			p.fatalf("%v", err)
		}
		if s := app.stats(); s.Pushes != n {
			p.fatalf("%d pushes of %d messages, want one each", s.Pushes, n)
		}
		p.Term(30 * time.Second)
	})

	t.Run("SIGTERM while waiting exits 0", func(t *testing.T) {
		app := newRecApp(t, 0, 0)
		cfg := redisStartConfig(t, brokers, topic, "g-term", app.url(), freeAddr(t))
		p := cfg.startNoWait()
		waitStore(t, p)
		// Messages admitted and waiting for the store: the drain must abandon them.
		waitFor(t, 30*time.Second, "messages admitted", func() (bool, string) {
			v, err := p.metric("mqsidecar_inflight_messages")
			return err == nil && v > 0, fmt.Sprintf("inflight %v %v", v, err)
		}, func() string { return p.logTail(20) })
		p.Term(15 * time.Second) // shutdown_timeout 2s
		if s := app.stats(); s.Pushes != 0 {
			t.Fatalf("%d pushes without a store", s.Pushes)
		}
		if log := p.logText(); strings.Contains(log, "dedup store failed") {
			t.Fatalf("the shutdown was taken for a store failure:\n%s", p.logTail(30))
		}
	})
}
