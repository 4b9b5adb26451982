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
	"github.com/mqsidecar/mqsidecar/adapters/rocketmq"
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
	o := TxnOptions{Store: store, CheckURL: os.Getenv("MQSIDECAR_TXN_CHECK"),
		Timeout: 2 * time.Second, MinBackoff: 200 * time.Millisecond, MaxBackoff: time.Second, Poll: 100 * time.Millisecond}
	var half *rocketmq.Txn
	if os.Getenv("MQSIDECAR_TXN_BROKER") == "rocketmq" {
		half = rocketmqHalf(t, &o)
	} else {
		cl, err := kgo.NewClient(kgo.SeedBrokers(kafkaBrokers(t)...))
		if err != nil {
			t.Fatal(err)
		}
		o.Publisher = kafkaPublisher{cl}
	}
	m, err := NewTxn(o)
	if err != nil {
		t.Fatal(err)
	}
	if half != nil {
		half.SetCheck(m.CheckBack)
		go func() { _ = half.Run(context.Background()) }()
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

func startChild(t *testing.T, dir, checkURL string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestTxnChildProcess$", "-test.v")
	cmd.Env = append(append(os.Environ(), "MQSIDECAR_TXN_CHILD="+dir, "MQSIDECAR_TXN_CHECK="+checkURL), env...)
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

// seen records what a consumer got: per message ID, how often and when first.
type seen struct {
	mu    sync.Mutex
	count map[string]int
	first map[string]time.Time
}

func newSeen() *seen { return &seen{count: map[string]int{}, first: map[string]time.Time{}} }

func (s *seen) add(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.count[id] == 0 {
		s.first[id] = time.Now()
	}
	s.count[id]++
}

func (s *seen) get(id string) (int, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count[id], s.first[id]
}

// consumeKafka reads the topic from the start until the test ends, by ce-id.
func consumeKafka(t *testing.T, brokers []string, topic string) *seen {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := newSeen()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
				for _, h := range r.Headers {
					if h.Key == "ce-id" {
						s.add(string(h.Value))
					}
				}
			})
		}
	}()
	t.Cleanup(func() { cancel(); <-done; cl.Close() })
	return s
}

// TestTxnKafkaKill9 runs the transaction scenario on the real Kafka.
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
	txnScenario(t, topic, consumeKafka(t, brokers, topic))
}

// txnScenario, on a real broker through a real process: commit → consumed once; rollback
// → never consumed; the app answering neither → the check URL decides; kill -9 of the
// process between prepare and commit → after the restart the check-back resolves it:
// nothing lost, nothing published before the commit decision.
func txnScenario(t *testing.T, topic string, got *seen, env ...string) {
	var (
		mu      sync.Mutex
		answers = map[string]string{} // what the check URL answers per ID ("" = UNKNOWN)
		asked   = map[string]int{}
		decided = map[string]time.Time{} // when the check URL first answered COMMIT
	)
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("Mq-Transaction-Id")
		mu.Lock()
		asked[id]++
		a := answers[id]
		if a == "COMMIT" && decided[id].IsZero() {
			decided[id] = time.Now()
		}
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
	answer := func(id, a string) { mu.Lock(); answers[id] = a; mu.Unlock() }
	timesAsked := func(id string) int { mu.Lock(); defer mu.Unlock(); return asked[id] }

	dir := t.TempDir()
	c := startChild(t, dir, checkURL, env...)
	ids := []string{"commit", "rollback", "silent-commit", "silent-rollback", "kill-commit", "kill-rollback"}
	for _, id := range ids {
		if code := c.post(t, "/v1/transactions?topic="+topic, "payload-"+id, "Idempotency-Key", id); code != http.StatusCreated {
			t.Fatalf("prepare %s: %d", id, code)
		}
	}
	if code := c.post(t, "/v1/transactions/commit/commit", ""); code != http.StatusOK {
		t.Fatalf("commit: %d", code)
	}
	if code := c.post(t, "/v1/transactions/rollback/rollback", ""); code != http.StatusOK {
		t.Fatalf("rollback: %d", code)
	}
	answer("silent-commit", "COMMIT")
	answer("silent-rollback", "ROLLBACK")
	// The silent ones pass their timeout (2 s) and are asked; so are the kill-* ones,
	// which the app leaves undecided until the process is gone.
	waitFor(t, 10*time.Second, "the check URL asked about every undecided transaction", func() bool {
		return timesAsked("silent-commit") > 0 && timesAsked("silent-rollback") > 0 && timesAsked("kill-commit") > 0 && timesAsked("kill-rollback") > 0
	})
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = c.cmd.Wait()
	before := timesAsked("kill-commit") + timesAsked("kill-rollback")
	answer("kill-commit", "COMMIT")
	answer("kill-rollback", "ROLLBACK")
	c = startChild(t, dir, checkURL, env...)
	waitFor(t, 20*time.Second, "kill-commit consumed after the restart", func() bool {
		n, _ := got.get("kill-commit")
		return n > 0 && timesAsked("kill-commit")+timesAsked("kill-rollback") >= before+2
	})
	time.Sleep(2 * time.Second) // room for a copy that should not come
	want := map[string]int{"commit": 1, "silent-commit": 1, "kill-commit": 1}
	for _, id := range ids {
		if n, _ := got.get(id); n != want[id] {
			t.Errorf("%s consumed %d times, want %d (check URL asked %d times)", id, n, want[id], timesAsked(id))
		}
	}
	for _, id := range []string{"silent-commit", "kill-commit"} {
		mu.Lock()
		d := decided[id]
		mu.Unlock()
		if _, first := got.get(id); !first.IsZero() && first.Before(d) {
			t.Errorf("%s was consumed at %s, before the check URL answered COMMIT at %s", id, first.Format(time.StampMilli), d.Format(time.StampMilli))
		}
	}
	if timesAsked("commit") != 0 || timesAsked("rollback") != 0 {
		t.Errorf("the check URL was asked about decided transactions: %d, %d", timesAsked("commit"), timesAsked("rollback"))
	}
	// The decisions stand after the restart: a commit answers 200, a commit of a rolled back one 409.
	if code := c.post(t, "/v1/transactions/kill-commit/commit", ""); code != http.StatusOK {
		t.Errorf("commit of kill-commit after the check-back: %d, want 200", code)
	}
	if code := c.post(t, "/v1/transactions/kill-rollback/commit", ""); code != http.StatusConflict {
		t.Errorf("commit of kill-rollback after the check-back: %d, want 409", code)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
