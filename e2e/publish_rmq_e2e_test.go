//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The publish endpoint of the built binary on RabbitMQ and RocketMQ (issue 14, point 6):
// one sidecar publishes through its endpoint and consumes what it published. 8 HTTP
// clients publish a stream, each retrying a 5xx (and a 409 while its first attempt is in
// flight) with the same Idempotency-Key, while the broker is stopped, started, killed with
// SIGKILL and started again. Afterwards every publish answered 2xx reached the app (0
// lost), each ID was answered 2xx by the app exactly once (the consumer side dedups the
// copies that retries after a 504 may have stored), and the app saw no ID nobody published.

// publishClients runs 8 publishing clients against url(id) until stop; it returns the IDs
// answered 2xx (with their receipts' bodies checked by ok) and the answers by status.
type publishRun struct {
	mu        sync.Mutex
	confirmed map[string]bool
	attempted map[string]bool
	statuses  map[int]int
	stop      atomic.Bool
	wg        sync.WaitGroup
}

func startPublishing(t *testing.T, url func(id string) string, checkReceipt func(body []byte) error) *publishRun {
	r := &publishRun{confirmed: map[string]bool{}, attempted: map[string]bool{}, statuses: map[int]int{}}
	client := &http.Client{Timeout: 20 * time.Second}
	run := uniqueName("p")
	for c := range 8 {
		r.wg.Go(func() {
			for i := 0; !r.stop.Load(); i++ {
				id := fmt.Sprintf("%s-c%d-%05d", run, c, i)
				for {
					req, _ := http.NewRequest(http.MethodPost, url(id), bytes.NewReader([]byte("payload "+id)))
					req.Header.Set("Idempotency-Key", id)
					req.Header.Set("Content-Type", "text/plain")
					status := 0 // the request failed without an answer: retried like a 5xx
					var body []byte
					resp, err := client.Do(req)
					if err == nil {
						body, _ = io.ReadAll(resp.Body)
						resp.Body.Close()
						status = resp.StatusCode
					}
					r.mu.Lock()
					r.attempted[id] = true
					r.statuses[status]++
					if status/100 == 2 {
						r.confirmed[id] = true
					}
					r.mu.Unlock()
					if status/100 == 2 {
						if err := checkReceipt(body); err != nil {
							t.Errorf("publish %s: receipt %s: %v", id, body, err)
						}
						break
					}
					if status != 0 && status != http.StatusConflict && status/100 != 5 {
						t.Errorf("publish %s: %d %s (not retryable)", id, status, body)
						return
					}
					time.Sleep(100 * time.Millisecond) // a client backing off
				}
			}
		})
	}
	return r
}

func (r *publishRun) count() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.confirmed) }

// waitProgress waits until more publishes were answered 2xx than when it was called.
func (r *publishRun) waitProgress(t *testing.T, what string) {
	t.Helper()
	n := r.count()
	waitFor(t, 60*time.Second, what, func() (bool, string) {
		return r.count() > n+50, fmt.Sprintf("%d answered 2xx, statuses %v", r.count(), r.statuses)
	})
}

// finish stops the clients and checks the app's pushes against what was confirmed.
func (r *publishRun) finish(t *testing.T, app *recApp, p *sidecarProc) {
	r.stop.Store(true)
	r.wg.Wait()
	missing := func() []string {
		ok := app.okSet()
		var out []string
		for id := range r.confirmed {
			if !ok[id] {
				out = append(out, id)
			}
		}
		return out
	}
	waitFor(t, 2*time.Minute, "every publish answered 2xx reached the app", func() (bool, string) {
		m := missing()
		return len(m) == 0, fmt.Sprintf("%d of %d not yet pushed, e.g. %.3q", len(m), len(r.confirmed), m)
	}, func() string { return p.logTail(30) })
	time.Sleep(3 * time.Second) // copies would arrive now
	pushes, _ := app.snapshot()
	okAnswers := map[string]int{}
	for _, ps := range pushes {
		if !r.attempted[ps.ID] {
			t.Errorf("the app got %q, which nobody published", ps.ID)
		}
		if ps.Status/100 == 2 {
			okAnswers[ps.ID]++
		}
	}
	twice := 0
	for id, n := range okAnswers {
		if n > 1 {
			twice++
			if twice <= 10 {
				t.Errorf("%s answered 2xx by the app %d times: a copy was not removed", id, n)
			}
		}
	}
	dedups, err := p.metric("mqsidecar_messages_deduplicated_total")
	if err != nil {
		t.Errorf("metrics: %v", err)
	}
	t.Logf("%d publishes answered 2xx, %d pushes to the app, %d IDs pushed, %d of them answered 2xx more than once, %v copies removed by dedup; publish answers by status %v",
		len(r.confirmed), len(pushes), len(okAnswers), twice, dedups, r.statuses)
	if r.statuses[http.StatusGatewayTimeout]+r.statuses[http.StatusServiceUnavailable]+r.statuses[0] == 0 {
		t.Error("no publish failed while the broker was down: the disruption did not happen")
	}
}

// receiptWith checks that a 2xx body is a receipt of broker naming the durability fact.
func receiptWith(broker, fact string) func(body []byte) error {
	return func(body []byte) error {
		var rc struct {
			Broker     string   `json:"broker"`
			Durability []string `json:"durability"`
		}
		if err := json.Unmarshal(body, &rc); err != nil {
			return err
		}
		if rc.Broker != broker || !slices.Contains(rc.Durability, fact) {
			return fmt.Errorf("want broker %s and %s among the durability facts", broker, fact)
		}
		return nil
	}
}

// withPublish adds the publish endpoint on addr to a sidecar config.
func withPublish(yaml, addr string) string {
	return yaml + fmt.Sprintf("\npublish:\n  listen: %s\n  timeout: 5s\n", addr)
}

func TestRabbitMQE2EPublishBrokerChaos(t *testing.T) {
	r := newRabbitE2E(t, "publish")
	ex := r.exchange(t, r.queue+"-x", "k")
	lonely := r.exchange(t, r.queue+"-nobody", "") // no queue bound
	app := newRecApp(t, 0, 0)
	yaml, env := r.sidecarYAML(app.url(), filepath.Join(t.TempDir(), "dedup.db"))
	addr := freeAddr(t)
	p := newSidecarConfig(t, "sidecar", withPublish(yaml, addr), env...).start()

	// An exchange with no bound queue: never 2xx (422), also when retried.
	for range 3 {
		resp, err := http.Post("http://"+addr+"/v1/publish/"+lonely+"/k", "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnprocessableEntity {
			t.Fatalf("publish to an exchange without a queue: %d %s, want 422", resp.StatusCode, body)
		}
	}

	run := startPublishing(t, func(string) string { return "http://" + addr + "/v1/publish/" + ex + "/k" }, receiptWith("rabbitmq", "publisher-confirm"))
	run.waitProgress(t, "publishing started")
	harnessVerb(t, "rabbitmq.sh", "stop")
	harnessVerb(t, "rabbitmq.sh", "start")
	run.waitProgress(t, "publishing resumed after the restart")
	harnessVerb(t, "rabbitmq.sh", "kill")
	harnessVerb(t, "rabbitmq.sh", "start")
	if err := r.checkIntact(); err != nil {
		t.Fatal(err)
	}
	run.waitProgress(t, "publishing resumed after the kill")
	run.finish(t, app, p)
}

func TestRocketMQE2EPublishBrokerChaos(t *testing.T) {
	r := newRocketE2E(t, "publish", 4, "concurrent")
	app := newRecApp(t, 0, 0)
	yaml, env := r.sidecarYAML(app.url(), filepath.Join(t.TempDir(), "dedup.db"))
	addr := freeAddr(t)
	p := newSidecarConfig(t, "sidecar", withPublish(yaml, addr), env...).start()

	run := startPublishing(t, func(string) string { return "http://" + addr + "/v1/publish/" + r.topic }, receiptWith("rocketmq", "SEND_OK"))
	run.waitProgress(t, "publishing started")
	harnessVerb(t, "rocketmq.sh", "restart-broker")
	run.waitProgress(t, "publishing resumed after the broker restart")
	harnessVerb(t, "rocketmq.sh", "restart", "--hard")
	run.waitProgress(t, "publishing resumed after the kill -9")
	run.finish(t, app, p)
}
