//go:build e2e

package sidecar

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/mqsidecar/mqsidecar/config"
	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/dedup/redisstore"
	"github.com/mqsidecar/mqsidecar/metrics"
)

// TestSharedRedisStore runs two sidecars one after the other on one Redis store (dedup.store:
// redis, one key prefix) and one topic: the second reads every record again (another
// consumer group, from the earliest offset), and pushes none, because the first recorded
// every ID as completed in Redis. /readyz includes the store.
func TestSharedRedisStore(t *testing.T) {
	addr := os.Getenv("MQSIDECAR_E2E_REDIS")
	if addr == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("MQSIDECAR_E2E_REDIS is not set, but CI=true: start e2e/harness/redis.sh and eval its env (make test-e2e does)")
		}
		t.Skip("MQSIDECAR_E2E_REDIS not set (e2e/harness/redis.sh start; eval \"$(e2e/harness/redis.sh env)\")")
	}
	const topic, n = "orders", 300
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, topic))
	if err != nil {
		t.Fatal(err)
	}
	defer kafka.Close()
	produce(t, kafka.ListenAddrs(), topic, n)

	var mu sync.Mutex
	pushes := map[string]int{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		pushes[r.Header.Get("ce-id")]++
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	var b [4]byte
	_, _ = rand.Read(b[:])
	prefix := "mqsidecar:test:sidecar:" + hex.EncodeToString(b[:]) + ":"
	cfg := config.Defaults()
	cfg.Source.Kafka.Brokers = kafka.ListenAddrs()
	cfg.Source.Kafka.Topics = []string{topic}
	cfg.Source.Kafka.MessageID = "header:message-id"
	cfg.Source.Kafka.CommitInterval = 100 * time.Millisecond
	cfg.App.URL = "http://" + ln.Addr().String() + "/messages"
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Dedup.Store = "redis"
	cfg.Dedup.TTL = time.Minute
	cfg.Dedup.Redis.Addrs = []string{addr}
	cfg.Dedup.Redis.KeyPrefix = prefix

	run := func(group string) *Sidecar {
		c := cfg
		c.Source.Kafka.Group = group
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		sc, err := New(c, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- sc.Run(ctx) }()
		deadline := time.Now().Add(30 * time.Second)
		for metrics.CounterSum(sc.Metrics.Acked) < n {
			if time.Now().After(deadline) {
				stop()
				t.Fatalf("group %s: %v of %d acknowledged", group, metrics.CounterSum(sc.Metrics.Acked), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
		resp, err := http.Get("http://" + sc.AdminAddr() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("/readyz: %d %s", resp.StatusCode, body)
		}
		stop()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		return sc
	}
	first := run("g1")
	if d := metrics.CounterSum(first.Metrics.Deliveries); d != n {
		t.Fatalf("first sidecar: %v pushes, want %d", d, n)
	}
	second := run("g2")
	if d, dd := metrics.CounterSum(second.Metrics.Deliveries), metrics.CounterSum(second.Metrics.Deduplicated); d != 0 || dd != n {
		t.Fatalf("second sidecar: %v pushes and %v deduplicated, want 0 and %d (all completed in Redis)", d, dd, n)
	}
	mu.Lock()
	for id, c := range pushes {
		if c != 1 {
			t.Errorf("%s pushed %d times", id, c)
		}
	}
	mu.Unlock()

	st, err := redisstore.New(redisstore.Options{Addrs: []string{addr}, KeyPrefix: prefix, TTL: time.Minute, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	go func() { _ = st.Run(t.Context()) }() // the deferred Close ends it
	for i := range n {
		if e, err := st.Get("order-" + strconv.Itoa(i)); err != nil || e.State != dedup.Completed {
			t.Fatalf("order-%d in Redis: %+v %v", i, e, err)
		}
	}
}

func produce(t *testing.T, brokers []string, topic string, n int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range n {
		r := &kgo.Record{Key: []byte(fmt.Sprint("k", i%13)), Value: []byte("{}"),
			Headers: []kgo.RecordHeader{{Key: "message-id", Value: []byte("order-" + strconv.Itoa(i))}}}
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}
