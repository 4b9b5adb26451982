//go:build e2e

package e2e

import (
	"path/filepath"
	"testing"
	"time"
)

// TestKafkaE2EPublishBrokerStopAndCrash: 16 clients publish 400 keyed 1 KB messages each
// through the built binary's publish endpoint on a real Kafka, retrying 5xx with the same
// key, while the sidecar consumes the topic. Mid-stream the broker is stopped gracefully
// and started again, then killed with SIGKILL and started again. Afterwards every key is
// confirmed, every confirmed key was consumed (0 lost) and the app answered each ID once;
// the outages were answered 503 (the broker down) or 504 (outcome unknown), never 2xx.
// It restarts the broker: run it on a broker set of your own (e2e/harness/README.md).
func TestKafkaE2EPublishBrokerStopAndCrash(t *testing.T) {
	const clients, each = 16, 400
	k := newKafkaE2E(t, "publish", 4)
	app := newRecApp(t, 0, 0)
	listen := freeAddr(t)
	cfg := newSidecarConfig(t, "sidecar", publishConfig(k.brokers, k.topic, app.url(), filepath.Join(t.TempDir(), "dedup.db"), listen))
	p := cfg.start()
	tail := func() string { return p.logTail(40) }
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			if out, err := harness(t, 4*time.Minute, "kafka.sh", "start"); err != nil {
				t.Logf("cleanup: %v\n%s", err, out)
			}
		}
	})

	c, wait := runPubClients(t, "http://"+listen+"/v1/publish/"+k.topic, "c", clients, each, time.Now().Add(5*time.Minute))
	atLeast := func(n int) {
		waitFor(t, 2*time.Minute, "publishes confirmed", func() (bool, string) {
			return c.confirmedCount() >= n, c.String()
		}, tail)
	}
	atLeast(clients * each / 4)
	harnessVerb(t, "kafka.sh", "stop")
	time.Sleep(3 * time.Second)
	harnessVerb(t, "kafka.sh", "start")
	atLeast(clients * each / 2)
	harnessVerb(t, "kafka.sh", "kill")
	time.Sleep(3 * time.Second)
	harnessVerb(t, "kafka.sh", "start")
	restarted = true
	wait()

	if n := c.confirmedCount(); n != clients*each {
		t.Fatalf("%d of %d publishes confirmed: %s", n, clients*each, c)
	}
	c.mu.Lock()
	outage := c.statuses[503] + c.statuses[504]
	c.mu.Unlock()
	if outage == 0 {
		t.Fatalf("no publish was answered 503 or 504 while the broker was down: %s", c)
	}
	checkPublishedOnce(t, app, c, 3*time.Minute, tail)
	p.Term(30 * time.Second)
}
