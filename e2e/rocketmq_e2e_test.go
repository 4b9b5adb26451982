//go:build e2e

package e2e

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"
)

// The RocketMQ chaos tests: the broker-neutral scenarios of scenario_test.go against the
// real RocketMQ 5.3 in MQSIDECAR_E2E_ROCKETMQ (name server; e2e/harness/rocketmq.sh start).
// The topic and the group's %RETRY% topic are created before the sidecar starts, so no
// client waits for a 30 s route refresh. "Everything consumed" is read from the broker: the
// group's consumer offsets at the end of every queue of the topic and of the retry topic.

// TestRocketMQE2EKillRestart: ~3000 keyed IDs plus ~10% producer duplicates (same
// message-id property) on 4 queues, concurrent mode, an app failing ~10% of first attempts,
// the sidecar killed with SIGKILL four times mid-stream and restarted.
func TestRocketMQE2EKillRestart(t *testing.T) {
	r := newRocketE2E(t, "kill", 4, "concurrent")
	runKillRestart(t, r, killScenario{
		messages: 3000, keys: 64, dupShare: 0.1, failPerK: 100, kills: 4,
		appDelay: 500 * time.Microsecond, timeout: 2 * time.Minute,
	})
	t.Logf("copies per queue: %s", r.queueSpread())
	requireAckCheckSees(t, r)
}

// requireAckCheckSees checks the checker: with nothing answered, the consumer offsets read
// from the broker must cover messages, so ackViolations must complain. Otherwise the ack
// monitor would pass whatever the sidecar did (offsets not read, wrong group, no IDs known).
func requireAckCheckSees(t *testing.T, r *rocketEnv) {
	t.Helper()
	bad, err := r.uncovered(func() map[string]bool { return map[string]bool{} })
	if err != nil {
		t.Fatalf("ack check self-test: %v", err)
	}
	if len(bad) == 0 {
		t.Errorf("ack check self-test: with an empty 2xx set no consumed offset was reported; the ack monitor checks nothing")
	}
}

// TestRocketMQE2EBrokerRestart: the broker (not the name server) is stopped gracefully
// mid-stream and started again with its store (harness restart-broker); nothing is lost,
// everything is consumed, /readyz is true at the end. Whether /readyz noticed the outage is
// TestRocketMQE2EBrokerOutageReadiness's question.
func TestRocketMQE2EBrokerRestart(t *testing.T) {
	r := newRocketE2E(t, "brestart", 4, "concurrent")
	runBrokerRestart(t, r, "broker restart", false, func(*sidecarProc, func() string) {
		harnessVerb(t, "rocketmq.sh", "restart-broker")
	})
	requireAckCheckSees(t, r)
}

// TestRocketMQE2EBrokerOutageReadiness: a sidecar that has consumed everything (its pulls
// wait at the broker, long polling) while the broker restarts (harness restart-broker: the
// broker is down for 10-25 s on this machine): /readyz must turn false within
// outageNoticeBound of the restart's start (docs/guarantees.md: readiness = broker connected; the Kafka
// and RabbitMQ sidecars notice within a few seconds), and true again after it; a message
// produced after the restart must be delivered. The time from the broker's return to that
// delivery is logged.
func TestRocketMQE2EBrokerOutageReadiness(t *testing.T) {
	const outageNoticeBound = 10 * time.Second
	t0 := time.Now()
	r := newRocketE2E(t, "ready", 2, "concurrent")
	app := newRecApp(t, 0, 0)
	before := workload(rand.New(rand.NewPCG(1, 2)), "rb", 200, 8, 0)
	mustProduce(t, r, before...)
	yaml, env := r.sidecarYAML(app.url(), filepath.Join(t.TempDir(), "dedup.db"))
	cfg := newSidecarConfig(t, "sidecar", yaml, env...)
	p := cfg.start()
	tail := func() string { return p.logTail(30) }
	app.waitDelivered(t, len(before), time.Minute, tail)
	r.waitSettled(time.Minute, tail)

	// Sample /readyz every 100 ms from the restart's start until the broker is back.
	var firstFalse time.Duration = -1
	var firstWhy string
	quit, done := make(chan struct{}), make(chan struct{})
	rs := time.Now()
	go func() {
		defer close(done)
		for {
			if ok, why := p.readyz(); !ok && firstFalse < 0 {
				firstFalse, firstWhy = time.Since(rs), why
			}
			select {
			case <-quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	harnessVerb(t, "rocketmq.sh", "restart-broker")
	restartTook := time.Since(rs)
	close(quit)
	<-done
	back := time.Now()
	after := workload(rand.New(rand.NewPCG(3, 4)), "ra", 20, 4, 0)
	mustProduce(t, r, after...)
	app.waitDelivered(t, len(before)+len(after), 2*time.Minute, tail)
	recovered := time.Since(back)
	if err := p.waitReady(time.Minute); err != nil {
		p.fatalf("not ready after the broker came back: %v", err)
	}
	r.waitSettled(time.Minute, tail)
	p.Term(40 * time.Second)

	noticed := "never while the broker was down"
	if firstFalse >= 0 {
		noticed = fmt.Sprintf("after %s (%s)", firstFalse.Round(100*time.Millisecond), firstWhy)
	}
	pushes, conc := app.snapshot()
	rep := check(r.producedSoFar(), pushes, conc, false, false)
	printTable(t, row{Broker: r.name(), Test: "broker outage readiness", Took: time.Since(t0), Report: rep,
		Comments: fmt.Sprintf("restart-broker took %s; /readyz false %s; delivered %s after the broker was back",
			restartTook.Round(100*time.Millisecond), noticed, recovered.Round(100*time.Millisecond))})
	rep.requireClean(t)
	if firstFalse < 0 || firstFalse > outageNoticeBound {
		t.Errorf("/readyz did not turn false within %s of the broker going down (restart-broker took %s; first false: %s)",
			outageNoticeBound, restartTook.Round(100*time.Millisecond), noticed)
	}
}

// TestRocketMQE2EOrderlyKillRestart: orderly mode (one unsettled message per queue, queues
// in parallel), keys hashed to queues by the producer, so per-key order is checked as well;
// the sidecar is killed with SIGKILL once mid-stream and restarted. The broker keeps a
// queue's lock for the dead client for 60 s (its rebalance lock lifetime); the sidecar runs
// with a stable source.rocketmq.instance_name, so the restarted one is the same client and
// takes the locks back at once.
func TestRocketMQE2EOrderlyKillRestart(t *testing.T) {
	r := newRocketE2E(t, "orderly", 4, "orderly")
	runKillRestart(t, r, killScenario{
		messages: 1500, keys: 32, dupShare: 0.1, failPerK: 100, kills: 1,
		appDelay: 500 * time.Microsecond, timeout: 3 * time.Minute,
	})
	requireAckCheckSees(t, r)
}
