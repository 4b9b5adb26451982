package e2e

import (
	"bytes"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// TestKfakePublishThroughTheSidecar: 16 clients publish 100 keyed 1 KB messages each
// through the built binary's publish endpoint while it consumes the same topic: every
// publish answered 2xx is pushed to the app, each ID answered once; a second publish of a
// confirmed key is answered from its receipt and pushes nothing; an unknown topic is 404
// and a payload over publish.max_message_bytes 413.
func TestKfakePublishThroughTheSidecar(t *testing.T) {
	const topic = "published"
	brokers := newKfake(t, topic, 4)
	app := newRecApp(t, 0, 0)
	listen := freeAddr(t)
	cfg := newSidecarConfig(t, "sidecar", publishConfig(brokers, topic, app.url(), filepath.Join(t.TempDir(), "dedup.db"), listen))
	p := cfg.start()
	url := "http://" + listen + "/v1/publish/" + topic

	c, wait := runPubClients(t, url, "k", 16, 100, time.Now().Add(90*time.Second))
	wait()
	if n := c.confirmedCount(); n != 1600 {
		t.Fatalf("%d of 1600 publishes confirmed: %s", n, c)
	}
	checkPublishedOnce(t, app, c, 60*time.Second, func() string { return p.logTail(30) })

	before := app.stats().Pushes
	hc := &http.Client{Timeout: 10 * time.Second}
	if st := publishOnce(hc, url, "k-00-00000", bytes.Repeat([]byte{'a'}, 1024)); st != 200 {
		t.Fatalf("replay of a confirmed key: %d", st)
	}
	if st := publishOnce(hc, url, "k-00-00000", []byte("another payload")); st != 422 {
		t.Fatalf("a confirmed key with another payload: %d, want 422", st)
	}
	if st := publishOnce(hc, "http://"+listen+"/v1/publish/no-such-topic", "u1", []byte("x")); st != 404 {
		t.Fatalf("unknown topic: %d, want 404", st)
	}
	if st := publishOnce(hc, url, "big", bytes.Repeat([]byte{'b'}, 5000)); st != 413 {
		t.Fatalf("payload over the limit: %d, want 413", st)
	}
	time.Sleep(time.Second)
	if after := app.stats().Pushes; after != before {
		t.Fatalf("%d pushes after the replay and the refused publishes, want none", after-before)
	}
	p.Term(30 * time.Second)
}
