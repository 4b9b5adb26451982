//go:build e2e

package publish

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/dedup"
)

// kafkaPublisher is a minimal acks=all idempotent franz-go producer for these tests (the
// sidecar's own Kafka publisher is the publish endpoint's); it writes the ID as ce-id.
type kafkaPublisher struct{ cl *kgo.Client }

func (p kafkaPublisher) Publish(ctx context.Context, m adapters.OutMessage) (adapters.Receipt, error) {
	rec := &kgo.Record{Topic: m.Topic, Key: []byte(m.Key), Value: m.Payload, Headers: []kgo.RecordHeader{{Key: "ce-id", Value: []byte(m.ID)}}}
	if err := p.cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		return adapters.Receipt{}, fmt.Errorf("%w: %v", adapters.ErrUnavailable, err)
	}
	return adapters.Receipt{Broker: "kafka", Topic: m.Topic, ID: m.ID, Partition: &rec.Partition, Offset: &rec.Offset, Durability: []string{"acks=all", "idempotent"}}, nil
}
func (kafkaPublisher) Run(ctx context.Context) error   { <-ctx.Done(); return nil }
func (kafkaPublisher) Close(ctx context.Context) error { return nil }

func kafkaBrokers(t *testing.T) []string {
	addr := os.Getenv("MQSIDECAR_E2E_KAFKA")
	if addr == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("MQSIDECAR_E2E_KAFKA is not set, but CI=true")
		}
		t.Skip("MQSIDECAR_E2E_KAFKA not set (e2e/harness/all.sh start; eval \"$(e2e/harness/all.sh env)\")")
	}
	return strings.Split(addr, ",")
}

// TestTxnChildProcess is the sidecar's transaction part in a process of its own, for the
// kill -9 test below (it runs only when that test starts it).
func TestTxnChildProcess(t *testing.T) {
	dir := os.Getenv("MQSIDECAR_TXN_CHILD")
	if dir == "" {
		t.Skip("started by TestTxnKafkaKill9")
	}
	store, err := dedup.Open(filepath.Join(dir, "dedup.db"), dedup.Options{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(kafkaBrokers(t)...))
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewTxn(TxnOptions{Store: store, Publisher: kafkaPublisher{cl}, CheckURL: os.Getenv("MQSIDECAR_TXN_CHECK"),
		Timeout: 2 * time.Second, MinBackoff: 200 * time.Millisecond, MaxBackoff: time.Second, Poll: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = m.Run(context.Background()) }()
	go func() { _ = store.Run(context.Background()) }()
	fmt.Printf("LISTEN %s\n", ln.Addr())
	_ = http.Serve(ln, m)
}

type child struct {
	cmd  *exec.Cmd
	base string
}

func startChild(t *testing.T, dir, checkURL string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestTxnChildProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "MQSIDECAR_TXN_CHILD="+dir, "MQSIDECAR_TXN_CHECK="+checkURL)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "LISTEN "); ok {
				addr <- a
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case a := <-addr:
		return &child{cmd: cmd, base: "http://" + a}
	case <-time.After(20 * time.Second):
		t.Fatal("the child did not listen within 20s")
	}
	return nil
}

func (c *child) post(t *testing.T, path, body string, hdr ...string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", c.base+path, strings.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// consumed reads the topic from the start for d and counts the records per ce-id.
func consumed(t *testing.T, brokers []string, topic string, d time.Duration) map[string]int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	got := map[string]int{}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) {
			for _, h := range r.Headers {
				if h.Key == "ce-id" {
					got[string(h.Value)]++
				}
			}
		})
	}
	return got
}

// TestTxnKafkaKill9, on the real Kafka: commit → consumed once; rollback → never consumed;
// the app answering neither → the check URL decides; kill -9 of the process between
// prepare and commit → after the restart the check-back resolves it: nothing lost,
// nothing published without a commit.
func TestTxnKafkaKill9(t *testing.T) {
	brokers := kafkaBrokers(t)
	topic := fmt.Sprintf("txn-e2e-%d", time.Now().UnixNano())
	adm, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if _, err := kadm.NewClient(adm).CreateTopic(context.Background(), 1, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = kadm.NewClient(adm).DeleteTopics(context.Background(), topic) })

	var (
		mu      sync.Mutex
		answers = map[string]string{} // what the check URL answers per ID ("" = UNKNOWN)
		asked   = map[string]int{}
	)
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("Mq-Transaction-Id")
		mu.Lock()
		asked[id]++
		a := answers[id]
		mu.Unlock()
		if a == "" {
			a = "UNKNOWN"
		}
		_, _ = io.WriteString(w, a)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = app.Serve(ln) }()
	defer app.Close()
	checkURL := "http://" + ln.Addr().String() + "/check"

	dir := t.TempDir()
	c := startChild(t, dir, checkURL)
	prep := func(id string) {
		if code := c.post(t, "/v1/transactions?topic="+topic, "payload-"+id, "Idempotency-Key", id); code != http.StatusCreated {
			t.Fatalf("prepare %s: %d", id, code)
		}
	}
	for _, id := range []string{"commit", "rollback", "silent-commit", "silent-rollback", "kill-commit", "kill-rollback"} {
		prep(id)
	}
	if code := c.post(t, "/v1/transactions/commit/commit", ""); code != http.StatusOK {
		t.Fatalf("commit: %d", code)
	}
	if code := c.post(t, "/v1/transactions/rollback/rollback", ""); code != http.StatusOK {
		t.Fatalf("rollback: %d", code)
	}
	// kill -9 between prepare and commit: the kill-* IDs were never decided.
	mu.Lock()
	answers["silent-commit"], answers["silent-rollback"] = "COMMIT", "ROLLBACK"
	mu.Unlock()
	time.Sleep(3 * time.Second) // the silent ones pass their timeout (2s) and are checked
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = c.cmd.Wait()
	mu.Lock()
	answers["kill-commit"], answers["kill-rollback"] = "COMMIT", "ROLLBACK"
	mu.Unlock()
	c = startChild(t, dir, checkURL)
	deadline := time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		n := asked["kill-commit"] + asked["kill-rollback"]
		k := asked["kill-commit"]
		mu.Unlock()
		if n >= 2 && k >= 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // the publish after the check answer
	got := consumed(t, brokers, topic, 4*time.Second)
	want := map[string]int{"commit": 1, "silent-commit": 1, "kill-commit": 1}
	for _, id := range []string{"commit", "rollback", "silent-commit", "silent-rollback", "kill-commit", "kill-rollback"} {
		if got[id] != want[id] {
			t.Errorf("%s consumed %d times, want %d (asked %d)", id, got[id], want[id], asked[id])
		}
	}
	if len(got) != 3 {
		t.Errorf("consumed IDs %v, want only the three committed", got)
	}
	mu.Lock()
	if asked["commit"] != 0 || asked["rollback"] != 0 {
		t.Errorf("the check URL was asked about decided transactions: %v", asked)
	}
	mu.Unlock()
	// The decisions stand after the restart: a commit answers the receipt, a rollback 409.
	if code := c.post(t, "/v1/transactions/kill-commit/commit", ""); code != http.StatusOK {
		t.Errorf("commit of kill-commit after the check-back: %d, want 200", code)
	}
	if code := c.post(t, "/v1/transactions/kill-rollback/commit", ""); code != http.StatusConflict {
		t.Errorf("commit of kill-rollback after the check-back: %d, want 409", code)
	}
}
