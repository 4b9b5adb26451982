package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The publish endpoint's end-to-end proof: concurrent clients publish through the sidecar
// (POST /v1/publish/{topic} with an Idempotency-Key each), retrying every 5xx and 409 with
// the same key as a careful client does, while the same sidecar consumes the topic and
// pushes to the recording app. Every key answered 2xx must reach the app (0 lost), and the
// app must answer each ID 2xx once (the retries' copies removed by the consumer side's
// dedup, which reads the ID from the ce-id header).

// publishConfig is the sidecar config of the publish tests: the Kafka source on topic,
// reading the message ID from ce-id, the publish endpoint on listen.
func publishConfig(brokers []string, topic, appURL, dedupPath, listen string) string {
	y := kafkaConfig{brokers: brokers, topic: topic, group: topic + "-g", appURL: appURL, dedupPath: dedupPath,
		extra: fmt.Sprintf("publish:\n  listen: %s\n  max_message_bytes: 4096\n  timeout: 5s\n", listen)}.yaml()
	return strings.Replace(y, `message_id: "header:message-id"`, `message_id: "header:ce-id"`, 1)
}

// pubClients is the record of a run of publishing clients.
type pubClients struct {
	mu        sync.Mutex
	confirmed map[string]int // key → 2xx answers (a replayed receipt counts too)
	statuses  map[int]int    // every answer's status
	failed    []string       // keys given up at the deadline
	attempts  int
}

func (c *pubClients) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	codes := make([]int, 0, len(c.statuses))
	for s := range c.statuses {
		codes = append(codes, s)
	}
	sort.Ints(codes)
	var b strings.Builder
	fmt.Fprintf(&b, "confirmed=%d attempts=%d given-up=%d answers:", len(c.confirmed), c.attempts, len(c.failed))
	for _, s := range codes {
		fmt.Fprintf(&b, " %d×%d", s, c.statuses[s])
	}
	return b.String()
}

// confirmedCount is how many keys were answered 2xx so far.
func (c *pubClients) confirmedCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.confirmed)
}

// runPubClients starts clients goroutines, each publishing perClient keys
// "<prefix>-<client>-<n>" with a 1 KB payload, each key until 2xx (retrying 5xx, 409 and
// connection errors with the same key every 50 ms) or until deadline. wait returns once
// all are done.
func runPubClients(t testing.TB, url, prefix string, clients, perClient int, deadline time.Time) (c *pubClients, wait func()) {
	c = &pubClients{confirmed: map[string]int{}, statuses: map[int]int{}}
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			for n := range perClient {
				key := fmt.Sprintf("%s-%02d-%05d", prefix, i, n)
				payload := bytes.Repeat([]byte{byte('a' + n%26)}, 1024)
				for {
					status := publishOnce(hc, url, key, payload)
					c.mu.Lock()
					c.attempts++
					c.statuses[status]++
					if status >= 200 && status < 300 {
						c.confirmed[key]++
						c.mu.Unlock()
						break
					}
					if time.Now().After(deadline) {
						c.failed = append(c.failed, key)
						c.mu.Unlock()
						break
					}
					c.mu.Unlock()
					if status != 0 && status < 500 && status != http.StatusConflict {
						t.Errorf("publish %s: answered %d, which a retry does not change", key, status)
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		})
	}
	return c, wg.Wait
}

// publishOnce posts one message and returns the status (0: no answer).
func publishOnce(hc *http.Client, url, key string, payload []byte) int {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(payload))
	if err != nil {
		return 0
	}
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := hc.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// checkPublishedOnce waits until every confirmed key reached the app, then fails for any
// confirmed key the app never answered 2xx (lost) and any ID it answered 2xx more than
// once (a duplicate the consumer side should have removed).
func checkPublishedOnce(t *testing.T, app *recApp, c *pubClients, timeout time.Duration, tail func() string) {
	t.Helper()
	c.mu.Lock()
	keys := make([]string, 0, len(c.confirmed))
	for k := range c.confirmed {
		keys = append(keys, k)
	}
	c.mu.Unlock()
	sort.Strings(keys)
	missing := func() []string {
		ok := app.okSet()
		var out []string
		for _, k := range keys {
			if !ok[k] {
				out = append(out, k)
			}
		}
		return out
	}
	waitFor(t, timeout, "every confirmed publish consumed", func() (bool, string) {
		m := missing()
		return len(m) == 0, fmt.Sprintf("%d of %d confirmed keys not consumed yet; app %s", len(m), len(keys), app.stats())
	}, tail)
	// Let late copies (a retry's second record) be pushed or dropped by the dedup.
	time.Sleep(2 * time.Second)
	app.mu.Lock()
	var twice []string
	pushes := 0
	for id, n := range app.ok {
		if n > 1 {
			twice = append(twice, fmt.Sprintf("%s×%d", id, n))
		}
	}
	for _, n := range app.seen {
		pushes += n
	}
	app.mu.Unlock()
	t.Logf("publish: %s; app: %d IDs answered 2xx, %d pushes", c, len(app.okSet()), pushes)
	if len(twice) > 0 {
		sort.Strings(twice)
		t.Fatalf("%d IDs answered 2xx more than once by the app: %v", len(twice), twice[:min(20, len(twice))])
	}
}
