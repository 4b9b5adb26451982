package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// brokerUnderTest is what a scenario needs of a broker (kfake, Kafka, RabbitMQ): produce,
// configure the sidecar, and tell whether everything was acknowledged.
type brokerUnderTest interface {
	// name labels the table rows.
	name() string
	// describe names the destination, for logs.
	describe() string
	// produce sends msgs in order and returns once the broker confirmed them all.
	produce(ctx context.Context, msgs []message) error
	// producedSoFar returns every copy produced, in order.
	producedSoFar() []message
	// sidecarYAML is the sidecar config for this broker, plus environment (secrets).
	sidecarYAML(appURL, dedupPath string) (yaml string, env []string)
	// orderPromised reports whether per-key order is promised (the order check applies).
	orderPromised() bool
	// waitSettled waits until the broker holds nothing unacknowledged (Kafka: lag 0;
	// RabbitMQ: queue empty, nothing unacked).
	waitSettled(timeout time.Duration, extra ...func() string)
	// checkSettled checks the same once, without waiting.
	checkSettled() error
	// ackViolations describes acknowledgements of messages whose ID is not in ok() (the
	// app's 2xx set, called after the broker state was read, so that a set that only grows
	// can never blame the sidecar wrongly): Kafka commits covering such an offset, RabbitMQ
	// a queue holding fewer messages than copies of such IDs were produced.
	ackViolations(ok func() map[string]bool) ([]string, error)
	// sampleEvery is how often ackMonitor samples (RabbitMQ's CLI is slow).
	sampleEvery() time.Duration
}

// ackMonitor samples b.ackViolations against the app's 2xx set until stopped; stop returns
// the violations seen and the number of successful samples. Samples that fail (a broker
// restarting) are skipped and logged at the end.
func ackMonitor(t testing.TB, b brokerUnderTest, app *recApp) (stop func() (violations []string, samples int)) {
	quit := make(chan struct{})
	done := make(chan struct{})
	var viol []string
	n, errs := 0, 0
	var lastErr error
	go func() {
		defer close(done)
		tick := time.NewTicker(b.sampleEvery())
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
			}
			bad, err := b.ackViolations(app.okSet)
			if err != nil {
				errs++
				lastErr = err
				continue
			}
			n++
			if len(viol) < 20 {
				viol = append(viol, bad...)
			}
		}
	}()
	return func() ([]string, int) {
		close(quit)
		<-done
		if errs > 0 {
			t.Logf("ack monitor: %d samples, %d could not be taken (last: %v)", n, errs, lastErr)
		}
		return viol, n
	}
}

// killScenario parameterises runKillRestart.
type killScenario struct {
	messages int // unique IDs
	keys     int
	dupShare float64
	failPerK int // first attempts failed per thousand IDs
	kills    int
	appDelay time.Duration
	timeout  time.Duration // for each wait on progress
}

// runKillRestart produces s.messages unique IDs (plus duplicates) while a sidecar consumes
// them; kills it with SIGKILL at s.kills random points and restarts it; then requires every
// ID delivered, no silent duplicates, per-key order where promised, no concurrent pushes of
// one ID, acknowledgements that never cover an unanswered message, everything acknowledged,
// and exit 0 on SIGTERM.
func runKillRestart(t *testing.T, b brokerUnderTest, s killScenario) {
	t0 := time.Now()
	seed := uint64(time.Now().UnixNano())
	t.Logf("%s: seed %d, %s", b.name(), seed, b.describe())
	rng := rand.New(rand.NewPCG(seed, 42))

	app := newRecApp(t, s.failPerK, s.appDelay)
	msgs := workload(rng, "m", s.messages, s.keys, s.dupShare)
	yaml, env := b.sidecarYAML(app.url(), filepath.Join(t.TempDir(), "dedup.db"))
	cfg := newSidecarConfig(t, "sidecar", yaml, env...)

	stopMon := ackMonitor(t, b, app)
	waitProduced := produceInBackground(t, b, msgs, 100)
	p := cfg.start()
	current := func() string { return p.label + " log tail:\n" + p.logTail(30) }

	// Kill points: one random point in each of s.kills equal slices of 10%..85% of the IDs.
	// The app signals the moment the count is reached (while it answers that 2xx), so some
	// kills land between the app's 2xx and the sidecar's record of it.
	w := s.messages * 75 / 100 / max(1, s.kills)
	var killViol []string
	for i := range s.kills {
		at := s.messages/10 + i*w + rng.IntN(max(1, w))
		select {
		case <-app.deliveredReached(at):
		case <-time.After(s.timeout):
			p.fatalf("kill %d: %d IDs not delivered within %s (%s)", i+1, at, s.timeout, app.stats())
		}
		p.Kill9()
		t.Logf("kill %d: SIGKILL at %d IDs delivered (%s)", i+1, at, app.stats())
		// One acknowledgement sample while no sidecar runs: what the broker holds as done
		// now is exactly what the killed process acknowledged.
		if bad, err := b.ackViolations(app.okSet); err != nil {
			t.Logf("kill %d: acknowledgement sample failed: %v", i+1, err)
		} else {
			killViol = append(killViol, bad...)
		}
		p = cfg.start()
	}
	waitProduced()
	app.waitDelivered(t, s.messages, s.timeout, current)
	b.waitSettled(s.timeout, current)
	p.Term(40 * time.Second)
	if err := b.checkSettled(); err != nil {
		t.Errorf("after SIGTERM: %v", err)
	}
	viol, samples := stopMon()
	viol = append(viol, killViol...)

	pushes, conc := app.snapshot()
	r := check(b.producedSoFar(), pushes, conc, b.orderPromised(), b.orderPromised())
	printTable(t, row{Broker: b.name(), Test: fmt.Sprintf("kill-9 x%d", s.kills), Kills: s.kills, Order: b.orderPromised(), Took: time.Since(t0), Report: r,
		Comments: fmt.Sprintf("fail %d‰ first attempts, %d ack samples + 1 after each kill", s.failPerK, samples)})
	r.requireClean(t)
	if len(viol) > 0 {
		t.Errorf("acknowledged messages the app never answered 2xx (G1):\n%s", strings.Join(viol, "\n"))
	}
}

// produceInBackground produces msgs in batches from a goroutine; the returned function waits
// for it and fails the test on error.
func produceInBackground(t testing.TB, b brokerUnderTest, msgs []message, batch int) (wait func()) {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		for len(msgs) > 0 {
			n := min(batch, len(msgs))
			if err := b.produce(ctx, msgs[:n]); err != nil {
				done <- err
				return
			}
			msgs = msgs[n:]
		}
		done <- nil
	}()
	return func() {
		t.Helper()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// mustProduce produces msgs or fails the test.
func mustProduce(t testing.TB, b brokerUnderTest, msgs ...message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := b.produce(ctx, msgs); err != nil {
		t.Fatal(err)
	}
}

// runBrokerRestart delivers messages while the broker goes down and comes back with its data
// (bounce). The sidecar must recover by itself (/readyz true again) and lose nothing; with
// requireNotReady, /readyz must also have been seen false meanwhile.
func runBrokerRestart(t *testing.T, b brokerUnderTest, label string, requireNotReady bool, bounce func(p *sidecarProc, tail func() string)) {
	t0 := time.Now()
	seed := uint64(time.Now().UnixNano())
	t.Logf("%s: seed %d, %s", b.name(), seed, b.describe())
	rng := rand.New(rand.NewPCG(seed, 7))
	const n = 3000
	app := newRecApp(t, 50, 500*time.Microsecond)
	msgs := workload(rng, "r", n, 64, 0.1)
	half := len(msgs) / 2
	yaml, env := b.sidecarYAML(app.url(), filepath.Join(t.TempDir(), "dedup.db"))
	cfg := newSidecarConfig(t, "sidecar", yaml, env...)
	mustProduce(t, b, msgs[:half]...)

	stopMon := ackMonitor(t, b, app)
	p := cfg.start()
	tail := func() string { return p.logTail(30) }
	watch := watchReady(p, 100*time.Millisecond)
	app.waitDelivered(t, n/6, 2*time.Minute, tail)
	before := app.stats()
	tr := time.Now()
	bounce(p, tail)
	t.Logf("broker down and up again in %s; app before: %s, after: %s", time.Since(tr).Round(100*time.Millisecond), before, app.stats())
	if c, ok := b.(interface{ checkIntact() error }); ok {
		// A broker that lost the destination itself would otherwise show up as a long
		// wait for deliveries that cannot come; name the real cause instead.
		if err := c.checkIntact(); err != nil {
			p.fatalf("after the broker came back: %v", err)
		}
	}
	mustProduce(t, b, msgs[half:]...)
	app.waitDelivered(t, n, 3*time.Minute, tail)
	b.waitSettled(2*time.Minute, tail)
	if err := p.waitReady(time.Minute); err != nil {
		p.fatalf("not ready after the broker came back: %v", err)
	}
	sawFalse, changes := watch.stop()
	t.Logf("/readyz transitions: %s", strings.Join(changes, "; "))
	if ok, why := p.readyz(); !ok {
		p.fatalf("/readyz is not 200 after recovery: %s", why)
	}
	p.Term(40 * time.Second)
	if err := b.checkSettled(); err != nil {
		t.Errorf("after SIGTERM: %v", err)
	}
	viol, samples := stopMon()

	pushes, conc := app.snapshot()
	r := check(b.producedSoFar(), pushes, conc, b.orderPromised(), b.orderPromised())
	printTable(t, row{Broker: b.name(), Test: label, Order: b.orderPromised(), Took: time.Since(t0), Report: r,
		Comments: fmt.Sprintf("readyz: %d transitions, %d ack samples", len(changes), samples)})
	r.requireClean(t)
	if requireNotReady && !sawFalse {
		t.Errorf("/readyz never turned false while the broker was restarting (transitions: %s)", strings.Join(changes, "; "))
	}
	if len(viol) > 0 {
		t.Errorf("acknowledged messages the app never answered 2xx (G1):\n%s", strings.Join(viol, "\n"))
	}
}

// runAppDown takes the app down (mode) for outage while messages wait: nothing may be
// acknowledged that the app had not answered 2xx before the outage, and nothing may be
// answered meanwhile; once the app is back, everything is delivered and acknowledged.
func runAppDown(t *testing.T, b brokerUnderTest, mode appMode, outage time.Duration) {
	t0 := time.Now()
	seed := uint64(time.Now().UnixNano())
	t.Logf("%s: seed %d, %s", b.name(), seed, b.describe())
	rng := rand.New(rand.NewPCG(seed, 9))
	const n = 2000
	app := newRecApp(t, 0, 500*time.Microsecond)
	msgs := workload(rng, "d", n, 64, 0.05)
	yaml, env := b.sidecarYAML(app.url(), filepath.Join(t.TempDir(), "dedup.db"))
	cfg := newSidecarConfig(t, "sidecar", yaml, env...)
	mustProduce(t, b, msgs...)

	p := cfg.start()
	tail := func() string { return p.logTail(30) }
	app.waitDelivered(t, n/5, 2*time.Minute, tail)
	app.setMode(mode)
	down := time.Now()
	d0 := app.okSet()
	frozen := func() map[string]bool { return d0 }
	t.Logf("app down (%v) with %d of %d IDs delivered", mode, len(d0), n)

	// The outage lasts a fixed time on purpose: it asserts that nothing happens meanwhile.
	var viol []string
	samples := 0
	for time.Since(down) < outage {
		bad, err := b.ackViolations(frozen)
		if err != nil {
			t.Logf("sample during the outage failed: %v", err)
		} else {
			samples++
			viol = append(viol, bad...)
		}
		if got := app.stats().Delivered; got != len(d0) {
			p.fatalf("the app answered 2xx for %d more IDs while it was down", got-len(d0))
		}
		time.Sleep(min(time.Second, max(0, outage-time.Since(down))))
	}
	pushesDuring := app.stats().Pushes
	app.setMode(appUp)
	t.Logf("app up again after %s", time.Since(down).Round(100*time.Millisecond))
	app.waitDelivered(t, n, 3*time.Minute, tail)
	b.waitSettled(2*time.Minute, tail)
	p.Term(40 * time.Second)
	if err := b.checkSettled(); err != nil {
		t.Errorf("after SIGTERM: %v", err)
	}

	pushes, conc := app.snapshot()
	r := check(b.producedSoFar(), pushes, conc, b.orderPromised(), b.orderPromised())
	printTable(t, row{Broker: b.name(), Test: fmt.Sprintf("app-down %s", outage), Order: b.orderPromised(), Took: time.Since(t0), Report: r,
		Comments: fmt.Sprintf("%d delivered before the outage, %d pushes by its end, %d ack samples during it", len(d0), pushesDuring, samples)})
	r.requireClean(t)
	if samples == 0 {
		t.Errorf("no acknowledgement sample could be taken during the outage")
	}
	if len(viol) > 0 {
		t.Errorf("acknowledged while the app was down, for messages it had not answered 2xx (G1):\n%s", strings.Join(viol, "\n"))
	}
}
