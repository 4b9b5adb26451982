//go:build e2e

package e2e

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The fleet runner: several `mqsidecar run` processes consume one stream in one consumer
// group (Kafka, RocketMQ) or from one queue (RabbitMQ), each with its own dedup store, all
// pushing to one recording app, so that a message pushed by two replicas at once is caught
// as a concurrent push and a message replayed by a new owner of a partition or queue is
// caught as a duplicate. It ends with the drain check: once every replica stopped cleanly
// (SIGTERM, exit 0), a fresh sidecar in the same group, with a fresh store and a fresh app,
// must receive nothing the fleet's app already answered 2xx — the broker's saved
// acknowledgements must cover everything the fleet completed.

// fleetScenario parameterises runFleet.
type fleetScenario struct {
	label    string // names the table row
	replicas int    // sidecars running at once; 0 = 3
	messages int    // unique IDs
	keys     int
	dupShare float64 // producer duplicates
	failPerK int     // first attempts failed per thousand IDs
	appDelay time.Duration
	// kills: kill -9 of a random running replica at as many points mid-stream; each is
	// restarted at once with its own store (as a pod restarts with its volume).
	kills int
	// rolling: SIGTERM each replica in turn mid-stream (exit 0 required), each replaced by a
	// new one with an empty store (a rolling update of pods without volumes).
	rolling bool
	// scale: start with one replica, scale to replicas at 20% of the IDs delivered and back
	// to one (SIGTERM) at 60%.
	scale bool
	// sharedStore: the sidecars share one Redis dedup store (MQSIDECAR_E2E_REDIS) instead
	// of one embedded store each.
	sharedStore bool
	// noReplays: no ID may be pushed again after the app answered it 2xx, flagged or not
	// (what a shared store promises when no replica is killed between a 2xx and its record).
	noReplays bool
	// overlapAllowed: with each replica's own store, two replicas may push one ID at the
	// same time (flagged, never silent), which the embedded store does not promise to
	// prevent — only the shared store does. RocketMQ needs it: each member computes its
	// queue allocation from its own view of the group, so after a kill -9 two live members
	// can pull one queue until both have rebalanced. The count is still printed.
	overlapAllowed bool
	// quiet: once every ID was delivered, the fleet is stopped after the app saw no push
	// for this long (replays of moved partitions or queues done); 0 = 1 s. A broker whose
	// new owners hold back replays for a while needs more than that hold.
	quiet   time.Duration
	timeout time.Duration // for each wait on progress; 0 = 2 minutes
}

// fleetBroker is implemented by brokers whose sidecars need settings of their own per
// replica (RocketMQ: a client instance name, which the broker uses to tell the members of a
// group apart).
type fleetBroker interface {
	replicaEnv(replica string) []string
}

// drainWindow is how long the drain sidecar runs after it became ready. It asserts that
// nothing arrives, so it is a fixed time; replays of saved offsets arrive within a second or
// two of a consumer joining (the RocketMQ issue saw all of them within 8 s, most at once).
const drainWindow = 6 * time.Second

// replica is one member of the fleet: its config (own store) and its current process.
type replica struct {
	name string
	cfg  *sidecarConfig
	p    *sidecarProc
}

// runFleet runs s against b; see the comment at the top of the file. It requires every ID
// delivered, no silent duplicates, no concurrent pushes of one ID, order where promised,
// acknowledgements that never cover an unanswered message, nothing unacknowledged after the
// fleet stopped, and a drain sidecar that receives nothing the fleet completed.
func runFleet(t *testing.T, b brokerUnderTest, s fleetScenario) {
	t0 := time.Now()
	if s.replicas == 0 {
		s.replicas = 3
	}
	if s.timeout == 0 {
		s.timeout = 2 * time.Minute
	}
	if s.quiet == 0 {
		s.quiet = time.Second
	}
	var sharedEnv []string
	if s.sharedStore {
		sharedEnv = sharedStoreEnv(t)
		if s.kills > 0 {
			// An ID a killed replica had pushed but not recorded as completed waits for
			// that replica's lease: the fleet must not be stopped before it has run out,
			// or the ID is still in the queue for the drain check (correctly: nothing
			// recorded it as completed).
			s.quiet = max(s.quiet, sharedLease+time.Second)
		}
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("%s: seed %d, %s, %d replicas", b.name(), seed, b.describe(), s.replicas)
	rng := rand.New(rand.NewPCG(seed, 11))

	app := newRecApp(t, s.failPerK, s.appDelay)
	// IDs unique per run: a shared store outlives the test.
	msgs := workload(rng, fmt.Sprintf("f%x", seed&0xffffff), s.messages, s.keys, s.dupShare)
	seq := 0
	newReplica := func() *replica {
		seq++
		name := fmt.Sprintf("r%d", seq)
		yaml, env := b.sidecarYAML(app.url()+"?from="+name, filepath.Join(t.TempDir(), name+".db"))
		env = append(env, sharedEnv...)
		if fb, ok := b.(fleetBroker); ok {
			env = append(env, fb.replicaEnv(name)...)
		}
		return &replica{name: name, cfg: newSidecarConfig(t, name, yaml, env...)}
	}
	var live []*replica
	startNew := func() *replica {
		r := newReplica()
		r.p = r.cfg.start()
		live = append(live, r)
		return r
	}
	tails := func() string {
		var sb strings.Builder
		for _, r := range live {
			fmt.Fprintf(&sb, "---- %s (%s) ----\n%s\n", r.p.label, r.p.exitString(), r.p.logTail(15))
		}
		return sb.String()
	}
	waitAt := func(n int, what string) {
		select {
		case <-app.deliveredReached(n):
		case <-time.After(s.timeout):
			t.Fatalf("%s: %d IDs not delivered within %s (%s)\n%s", what, n, s.timeout, app.stats(), tails())
		}
	}
	stop := func(r *replica) {
		r.p.Term(40 * time.Second)
		live = slices.DeleteFunc(live, func(x *replica) bool { return x == r })
	}

	stopMon := ackMonitor(t, b, app)
	// The stream flows before the replicas join, one after the other: every join moves
	// partitions or queues with messages in flight, as when a fleet is deployed against a
	// backlog.
	waitProduced := produceInBackground(t, b, msgs, 100)
	first := s.replicas
	if s.scale {
		first = 1
	}
	for range first {
		startNew()
	}

	// Events at points spread over 10%..85% of the IDs, as in runKillRestart.
	events := 0
	var killed []killRecord
	var killViol []string
	killSamples := 0
	switch {
	case s.kills > 0:
		w := s.messages * 75 / 100 / s.kills
		for i := range s.kills {
			at := s.messages/10 + i*w + rng.IntN(max(1, w))
			waitAt(at, fmt.Sprintf("kill %d", i+1))
			r := live[rng.IntN(len(live))]
			before := time.Now()
			r.p.Kill9()
			killed = append(killed, killRecord{replica: r.name, before: before, after: time.Now()})
			t.Logf("kill %d: SIGKILL of %s at %s, %d IDs delivered (%s)", i+1, r.p.label, time.Now().Format("15:04:05.000000"), at, app.stats())
			// One acknowledgement sample right after each kill, as runKillRestart takes (the
			// periodic ones are rare on RabbitMQ, whose CLI is slow).
			if bad, err := b.ackViolations(app.okSet); err != nil {
				t.Logf("kill %d: acknowledgement sample failed: %v", i+1, err)
			} else {
				killViol = append(killViol, bad...)
				killSamples++
			}
			r.p = r.cfg.start()
			events++
		}
	case s.rolling:
		old := append([]*replica(nil), live...)
		w := s.messages * 75 / 100 / len(old)
		for i, r := range old {
			at := s.messages/10 + i*w + rng.IntN(max(1, w))
			waitAt(at, fmt.Sprintf("rolling %d", i+1))
			stop(r)
			n := startNew()
			t.Logf("rolling %d: %s replaced by %s (empty store) at %d IDs delivered (%s)", i+1, r.name, n.name, at, app.stats())
			events++
		}
	case s.scale:
		waitAt(s.messages/5, "scale up")
		for range s.replicas - 1 {
			startNew()
		}
		t.Logf("scaled 1 → %d at %s", len(live), app.stats())
		waitAt(s.messages*3/5, "scale down")
		for len(live) > 1 {
			stop(live[len(live)-1])
		}
		t.Logf("scaled %d → 1 at %s", s.replicas, app.stats())
		events = 2
	}
	waitProduced()
	app.waitDelivered(t, s.messages, s.timeout, tails)

	// Once the app saw no push for s.quiet (replays of moved queues done), every replica is
	// stopped cleanly, one after the other, without waiting for periodic offset commits:
	// what clean stops save must cover everything completed.
	waitFor(t, s.timeout, fmt.Sprintf("the app quiet for %s", s.quiet), func() (bool, string) {
		st, last := app.quiet()
		return st.Inflight == 0 && time.Since(last) > s.quiet, st.String()
	}, tails)
	for len(live) > 0 {
		stop(live[0])
	}
	stoppedErr := b.checkSettled()
	if stoppedErr != nil {
		t.Errorf("after every replica stopped cleanly, the broker holds unacknowledged messages: %v", stoppedErr)
	}
	viol, samples := stopMon()
	viol = append(viol, killViol...)
	samples += killSamples

	replays := drainCheck(t, b, app)

	pushes, conc := app.snapshot()
	orphans := markOrphans(pushes, killed)
	conc, orphanOverlaps := dropOrphanOverlaps(conc, pushes)
	r := check(b.producedSoFar(), pushes, conc, b.orderPromised(), b.orderPromised())
	if orphans > 0 {
		t.Logf("%d pushes were still with the app when their sidecar was killed; %d of them reached the app after another copy (unflagged: sent before the kill), %d overlapped a redelivered copy",
			orphans, r.OrphanRepeats, orphanOverlaps)
	}
	store := "own stores"
	if s.sharedStore {
		store = "shared store"
	}
	printTable(t, row{Broker: b.name(), Test: fmt.Sprintf("fleet×%d %s", s.replicas, s.label), Kills: s.kills, Order: b.orderPromised(),
		Took: time.Since(t0), Report: r,
		Comments: fmt.Sprintf("%s, %d events, fail %d‰, app %s, drain got %d completed, %d ack samples",
			store, events, s.failPerK, s.appDelay, len(replays), samples)})
	if s.overlapAllowed {
		if s.sharedStore {
			t.Fatal("overlapAllowed is for replicas with their own stores: the shared store promises no overlap")
		}
		t.Logf("%d concurrent pushes of one ID by two replicas (allowed with own stores; all flagged: %d silent)", r.Concurrent, r.SilentDups)
		r.Concurrent = 0
	}
	r.requireClean(t)
	if s.noReplays && r.FlaggedDups > 0 {
		t.Errorf("%d pushes of IDs the app had already answered 2xx (flagged), want none: %s", r.FlaggedDups, store)
	}
	if len(viol) > 0 {
		t.Errorf("acknowledged messages the app never answered 2xx (G1):\n%s", strings.Join(viol, "\n"))
	}
	if len(replays) > 0 {
		t.Errorf("drain check: after the fleet stopped cleanly, a fresh sidecar in the group received %d messages the app had already answered 2xx (their acknowledgements were never saved), e.g. %s",
			len(replays), strings.Join(replays[:min(5, len(replays))], " "))
	}
}

// killRecord is one kill -9 of a fleet replica: the process was running at before and gone
// at after.
type killRecord struct {
	replica       string
	before, after time.Time
}

// markOrphans marks the pushes a killed sidecar had sent and the app had not finished when
// the sidecar died: their connection was accepted before the kill and the app finished them
// after it began. The sidecar decided nothing about them after its death: it cannot take
// back a request on the wire, and the app may even handle it after the flagged redelivery
// another replica made meanwhile (RabbitMQ requeues a dead consumer's messages at once).
// Only the shared store holds such a redelivery back (for the dead replica's lease).
func markOrphans(pushes []push, killed []killRecord) int {
	n := 0
	for i := range pushes {
		p := &pushes[i]
		name, _, _ := strings.Cut(p.From, "@")
		for _, k := range killed {
			if name == k.replica && p.ConnAt.Before(k.after) && !p.Done.Before(k.before) {
				p.Orphan = true
				n++
				break
			}
		}
	}
	return n
}

// dropOrphanOverlaps removes from conc the IDs whose only overlapping pushes pair an orphan
// (see markOrphans) with another copy, and returns the rest and how many it removed.
func dropOrphanOverlaps(conc []string, pushes []push) ([]string, int) {
	byID := map[string][]push{}
	for _, p := range pushes {
		byID[p.ID] = append(byID[p.ID], p)
	}
	var kept []string
	for _, id := range conc {
		ps := byID[id]
		real := false
		for i := range ps {
			for j := i + 1; j < len(ps); j++ {
				a, b := ps[i], ps[j]
				if a.At.Before(b.Done) && b.At.Before(a.Done) && !a.Orphan && !b.Orphan {
					real = true
				}
			}
		}
		if real {
			kept = append(kept, id)
		}
	}
	return kept, len(conc) - len(kept)
}

// drainCheck starts a fresh sidecar in the fleet's group (fresh embedded store, fresh app,
// no shared store), lets it run for drainWindow and stops it; it returns the IDs it
// received that done (the fleet's app) had answered 2xx.
func drainCheck(t *testing.T, b brokerUnderTest, done *recApp) []string {
	t.Helper()
	app := newRecApp(t, 0, 0)
	yaml, env := b.sidecarYAML(app.url(), filepath.Join(t.TempDir(), "drain.db"))
	if fb, ok := b.(fleetBroker); ok {
		env = append(env, fb.replicaEnv("drain")...)
	}
	p := newSidecarConfig(t, "drain", yaml, env...).start()
	time.Sleep(drainWindow) // asserts that nothing arrives: a fixed window on purpose
	p.Term(40 * time.Second)
	ok := done.okSet()
	pushes, _ := app.snapshot()
	var replays []string
	var firstReplays []push
	seen := map[string]bool{}
	for _, ps := range pushes {
		if ok[ps.ID] && !seen[ps.ID] {
			seen[ps.ID] = true
			replays = append(replays, fmt.Sprintf("%s(p%s@%s)", ps.ID, ps.Partition, ps.Offset))
			if len(firstReplays) < 3 {
				firstReplays = append(firstReplays, ps)
			}
		}
	}
	t.Logf("drain check: the fresh sidecar received %d pushes, %d of IDs the fleet had completed", len(pushes), len(replays))
	// Where the fleet pushed the first few: which replica, when, from which coordinates.
	fleet, _ := done.snapshot()
	for _, ps := range firstReplays {
		var lines []string
		for _, f := range fleet {
			if f.ID == ps.ID {
				lines = append(lines, fmt.Sprintf("%s at %s p%s@%s attempt %d redelivered %t status %d",
					f.From, f.At.Format("15:04:05.000"), f.Partition, f.Offset, f.Attempt, f.Redelivered, f.Status))
			}
		}
		t.Logf("drain got %s (p%s@%s attempt %d redelivered %t at %s); the fleet pushed it: %s", ps.ID, ps.Partition, ps.Offset,
			ps.Attempt, ps.Redelivered, ps.At.Format("15:04:05.000"), strings.Join(lines, "; "))
	}
	return replays
}

// sharedStoreEnv returns the environment that points a sidecar at the shared Redis dedup
// store in MQSIDECAR_E2E_REDIS (e2e/harness/redis.sh). The lease is short so that the IDs a
// killed replica held go to the others within seconds, not the default 30.
// sharedLease is the fleet tests' dedup.redis.lease: short, so that a killed replica's IDs
// are pushed again within the test.
const sharedLease = 4 * time.Second

func sharedStoreEnv(t *testing.T) []string {
	t.Helper()
	return []string{
		"MQSIDECAR_DEDUP_STORE=redis",
		"MQSIDECAR_DEDUP_REDIS_ADDRS=" + brokerEnv(t, "MQSIDECAR_E2E_REDIS", "redis.sh"),
		"MQSIDECAR_DEDUP_REDIS_LEASE=" + sharedLease.String(),
		"MQSIDECAR_DEDUP_REDIS_TIMEOUT=2s",
	}
}
