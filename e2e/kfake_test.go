package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// newKfake starts an in-process Kafka with one topic and returns its addresses.
func newKfake(t *testing.T, topic string, partitions int32) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// TestKfakeKillRestart: 3000 keyed IDs plus ~10% producer duplicates over 8 partitions, an
// app failing ~10% of first attempts, the sidecar killed with SIGKILL three times mid-stream
// and restarted. Nothing lost, no silent duplicate, per-key order, lag 0, SIGTERM exit 0.
func TestKfakeKillRestart(t *testing.T) {
	const topic, partitions = "orders", 8
	k := newKafkaEnv(t, "kfake", newKfake(t, topic, partitions), topic, "e2e-kill")
	runKillRestart(t, k, killScenario{
		messages: 3000, keys: 64, dupShare: 0.1, failPerK: 100, kills: 3,
		appDelay: 500 * time.Microsecond, timeout: 60 * time.Second,
	})
}

// TestKfakeGracefulShutdownCommits: with a commit interval far longer than the test, only the
// shutdown can commit. SIGTERM after everything was delivered → exit 0 and committed ==
// high watermark; a restart then reads nothing and pushes nothing.
func TestKfakeGracefulShutdownCommits(t *testing.T) {
	t0 := time.Now()
	const topic, group, n = "orders", "e2e-graceful", 1000
	brokers := newKfake(t, topic, 4)
	k := newKafkaEnv(t, "kfake", brokers, topic, group)
	app := newRecApp(t, 50, 0)
	cfg := newSidecarConfig(t, "sidecar", kafkaConfig{
		brokers: brokers, topic: topic, group: group, appURL: app.url(),
		dedupPath: filepath.Join(t.TempDir(), "dedup.db"), commitInterval: "1h",
	}.yaml())
	msgs := make([]message, n)
	for i := range msgs {
		msgs[i] = message{ID: fmt.Sprintf("g-%04d", i), Key: fmt.Sprintf("k%02d", i%16), Partition: -1}
	}
	k.mustProduce(msgs...)

	p := cfg.start()
	app.waitDelivered(t, n, 60*time.Second, func() string { return p.logTail(30) })
	// Let the lanes' completions become durable and settled: the gate's in-flight gauge is 0.
	waitFor(t, 30*time.Second, "nothing in flight in the sidecar", func() (bool, string) {
		v, err := p.metric("mqsidecar_inflight_messages")
		if err != nil {
			return false, err.Error()
		}
		return v == 0, fmt.Sprintf("inflight %v", v)
	})
	lagBefore, _, err := k.lag()
	if err != nil {
		t.Fatal(err)
	}
	if lagBefore == 0 {
		t.Fatalf("everything was committed before SIGTERM although commit_interval is 1h: the test cannot tell whether shutdown commits")
	}
	p.Term(30 * time.Second)
	// No waiting: exit 0 means the commit happened.
	if lag, desc, err := k.lag(); err != nil || lag != 0 {
		p.fatalf("after SIGTERM exit 0: lag %d (%s) err %v, want 0 (was %d before SIGTERM)", lag, desc, err, lagBefore)
	}

	before := app.stats().Pushes
	p2 := cfg.start()
	waitFor(t, 30*time.Second, "the restarted sidecar to own all 4 partitions", func() (bool, string) {
		state, members, assigned, err := k.groupMembers()
		if err != nil {
			return false, err.Error()
		}
		return state == "Stable" && len(members) == 1 && assigned == 4, fmt.Sprintf("state %s members %v assigned %d", state, members, assigned)
	}, func() string { return p2.logTail(30) })
	// Quiet period: nothing may arrive. This waits on purpose; it asserts an absence.
	quiet := 3 * time.Second
	for end := time.Now().Add(quiet); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if got := app.stats().Pushes; got != before {
			p2.fatalf("the app received %d pushes after a restart following a clean shutdown", got-before)
		}
		recv, err := p2.metric("mqsidecar_messages_received_total")
		if err != nil {
			p2.fatalf("metrics: %v", err)
		}
		if recv != 0 {
			p2.fatalf("the restarted sidecar read %v messages although everything was committed", recv)
		}
	}
	p2.Term(30 * time.Second)

	pushes, conc := app.snapshot()
	r := check(k.producedSoFar(), pushes, conc, true, true)
	printTable(t, row{Broker: "kfake", Test: "graceful-shutdown", Order: true, Took: time.Since(t0), Report: r,
		Comments: fmt.Sprintf("lag before SIGTERM %d, after 0; restart read 0 in %s", lagBefore, quiet)})
	r.requireClean(t)
}

// TestKfakeProducerDuplicates: copies of one ID produced far apart (after the original
// completed), close together (same batch, other partition), and while the original is held
// in flight by the app (copies on other partitions, i.e. other lanes). Every ID is pushed
// exactly once; no two pushes of one ID overlap; every copy is acknowledged.
func TestKfakeProducerDuplicates(t *testing.T) {
	t0 := time.Now()
	const topic, group, parts = "orders", "e2e-dups", 8
	brokers := newKfake(t, topic, parts)
	k := newKafkaEnv(t, "kfake", brokers, topic, group)
	app := newRecApp(t, 0, 0)
	cfg := newSidecarConfig(t, "sidecar", kafkaConfig{
		brokers: brokers, topic: topic, group: group, instanceID: "dups-0", appURL: app.url(),
		dedupPath: filepath.Join(t.TempDir(), "dedup.db"),
	}.yaml())
	p := cfg.start()
	tail := func() string { return p.logTail(30) }
	dups := 0

	// Far apart: originals delivered and committed first, then two copies each.
	var far, farDups []message
	for i := range 100 {
		id := fmt.Sprintf("far-%03d", i)
		far = append(far, message{ID: id, Partition: int32(i % parts)})
		farDups = append(farDups, message{ID: id, Dup: true, Partition: int32((i + 3) % parts)}, message{ID: id, Dup: true, Partition: int32(i % parts)})
	}
	k.mustProduce(far...)
	app.waitDelivered(t, 100, 30*time.Second, tail)
	k.waitLagZero(30*time.Second, tail)
	k.mustProduce(farDups...)
	dups += len(farDups)
	k.waitLagZero(30*time.Second, tail)

	// Close together: each copy right behind its original, on another partition.
	var near []message
	for i := range 200 {
		id := fmt.Sprintf("near-%03d", i)
		near = append(near, message{ID: id, Partition: int32(i % parts)}, message{ID: id, Dup: true, Partition: int32((i + 1) % parts)})
	}
	k.mustProduce(near...)
	dups += 200
	app.waitDelivered(t, 300, 30*time.Second, tail)
	k.waitLagZero(30*time.Second, tail)

	// In flight: the app holds the first push of each original; the copies arrive on the
	// same partition and on an idle one meanwhile.
	held := []string{"held-0", "held-1", "held-2", "held-3"}
	app.holdFirst(held...)
	var orig, copies []message
	for i, id := range held {
		orig = append(orig, message{ID: id, Partition: int32(i)})
		copies = append(copies, message{ID: id, Dup: true, Partition: int32(i + 4)}, message{ID: id, Dup: true, Partition: int32(i)})
	}
	k.mustProduce(orig...)
	waitFor(t, 30*time.Second, "the held originals to be in flight at the app", func() (bool, string) {
		n := 0
		for _, id := range held {
			n += app.inflightOf(id)
		}
		return n == len(held), fmt.Sprintf("%d of %d held pushes in flight", n, len(held))
	}, tail)
	k.mustProduce(copies...)
	dups += len(copies)
	total := len(k.producedSoFar())
	waitFor(t, 30*time.Second, "the sidecar to have read every copy", func() (bool, string) {
		v, err := p.metric("mqsidecar_messages_received_total")
		if err != nil {
			return false, err.Error()
		}
		return int(v) >= total, fmt.Sprintf("received %v of %d", v, total)
	}, tail)
	for _, id := range held {
		if n := app.inflightOf(id); n != 1 {
			p.fatalf("%s: %d pushes in flight while a copy was held, want 1", id, n)
		}
	}
	app.release(held...)
	app.waitDelivered(t, 304, 30*time.Second, tail)
	k.waitLagZero(30*time.Second, tail)

	dedups, err := p.metric("mqsidecar_messages_deduplicated_total")
	if err != nil {
		p.fatalf("metrics: %v", err)
	}
	// The store's own metrics: every unique ID recorded, its commits timed.
	entries, err1 := p.metric("mqsidecar_dedup_entries")
	commits, err2 := p.metric("mqsidecar_dedup_commit_duration_seconds_count")
	if err := errors.Join(err1, err2); err != nil {
		p.fatalf("metrics: %v", err)
	}
	if unique := total - dups; int(entries) != unique || commits < 2 {
		t.Errorf("mqsidecar_dedup_entries = %v, want %d; commit duration count = %v, want > 1", entries, unique, commits)
	}
	p.Term(30 * time.Second)

	pushes, conc := app.snapshot()
	perID := map[string]int{}
	for _, ps := range pushes {
		perID[ps.ID]++
	}
	var multi []string
	for id, n := range perID {
		if n != 1 {
			multi = append(multi, fmt.Sprintf("%s×%d", id, n))
		}
	}
	r := check(k.producedSoFar(), pushes, conc, false, false)
	printTable(t, row{Broker: "kfake", Test: "producer-duplicates", Took: time.Since(t0), Report: r,
		Comments: fmt.Sprintf("%d duplicate copies, %v deduplicated", dups, dedups)})
	r.requireClean(t)
	if len(multi) > 0 {
		t.Errorf("IDs not pushed exactly once: %s", strings.Join(multi, " "))
	}
	if int(dedups) != dups {
		t.Errorf("mqsidecar_messages_deduplicated_total = %v, want %d (every duplicate copy)", dedups, dups)
	}
}

// TestKfakeBadConfig: bad configuration → `config validate` and `run` exit 2 naming the key,
// without connecting to the brokers or the app and without creating the dedup store.
func TestKfakeBadConfig(t *testing.T) {
	counter := newConnCounter(t)
	dir := t.TempDir()
	dedupPath := filepath.Join(dir, "dedup.db")
	base := kafkaConfig{
		brokers: []string{counter.addr()}, topic: "orders", group: "g",
		appURL: "http://" + counter.addr() + "/push", dedupPath: dedupPath,
	}
	cases := []struct {
		name    string
		cfg     kafkaConfig
		env     []string
		wantKey string
	}{
		{"unknown key", with(base, func(c *kafkaConfig) { c.deliveryExtra = "  max_inflite: 10" }), nil, "delivery.max_inflite"},
		{"max_attempts without dead letter", with(base, func(c *kafkaConfig) { c.deliveryExtra = "  max_attempts: 3" }), nil, "delivery.max_attempts"},
		{"bad app url", with(base, func(c *kafkaConfig) { c.appURL = "127.0.0.1:8080/push" }), nil, "app.url"},
		{"bad env override", base, []string{"MQSIDECAR_DELIVERY_MAX_INFLIGHT=0"}, "delivery.max_inflight"},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.yaml")
			if err := os.WriteFile(path, []byte(tc.cfg.yaml()), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{{"config", "validate", "--config", path}, {"run", "--config", path}} {
				res := runCLI(t, 20*time.Second, tc.env, args...)
				if res.code != 2 || !strings.Contains(res.output, tc.wantKey) {
					t.Errorf("mqsidecar %s: exit %d, want 2 with a message naming %s; output:\n%s", strings.Join(args[:len(args)-2], " "), res.code, tc.wantKey, res.output)
				}
				if res.took > 10*time.Second {
					t.Errorf("mqsidecar %s took %s to refuse a bad config", strings.Join(args[:len(args)-2], " "), res.took)
				}
			}
		})
	}
	if n := counter.n.Load(); n != 0 {
		t.Errorf("%d connections to the broker/app address: a bad config must be refused before connecting anywhere", n)
	}
	if _, err := os.Stat(dedupPath); err == nil {
		t.Errorf("the dedup store %s was created although the config was refused", dedupPath)
	}
}

func with(c kafkaConfig, f func(*kafkaConfig)) kafkaConfig {
	f(&c)
	return c
}

// TestKfakeStoreLocked: a second sidecar on the same dedup.path exits non-zero quickly with a
// message saying the file is locked, before contacting any broker; the first keeps running
// and delivering.
func TestKfakeStoreLocked(t *testing.T) {
	const topic, group = "orders", "e2e-locked"
	brokers := newKfake(t, topic, 2)
	k := newKafkaEnv(t, "kfake", brokers, topic, group)
	app := newRecApp(t, 0, 0)
	dedupPath := filepath.Join(t.TempDir(), "dedup.db")
	first := newSidecarConfig(t, "first", kafkaConfig{brokers: brokers, topic: topic, group: group, appURL: app.url(), dedupPath: dedupPath}.yaml()).start()

	counter := newConnCounter(t)
	second := newSidecarConfig(t, "second", kafkaConfig{
		brokers: []string{counter.addr()}, topic: topic, group: group, appURL: "http://" + counter.addr() + "/push", dedupPath: dedupPath,
	}.yaml()).startNoWait()
	code, exited := second.Wait(15 * time.Second)
	switch {
	case !exited:
		second.fatalf("a second sidecar on a locked dedup store still runs after 15s; want a quick non-zero exit")
	case code == 0:
		second.fatalf("a second sidecar on a locked dedup store exited 0; want non-zero")
	case !strings.Contains(strings.ToLower(second.logText()), "locked"):
		second.fatalf("exit %d without a message saying the store is locked", code)
	}
	if n := counter.n.Load(); n != 0 {
		t.Errorf("the second sidecar made %d connections before refusing the locked store", n)
	}

	if ok, why := first.readyz(); !ok || !first.running() {
		first.fatalf("the first sidecar is not ready after the second was refused: %s", why)
	}
	var msgs []message
	for i := range 20 {
		msgs = append(msgs, message{ID: fmt.Sprintf("l-%02d", i), Key: "k", Partition: -1})
	}
	k.mustProduce(msgs...)
	app.waitDelivered(t, 20, 30*time.Second, func() string { return first.logTail(30) })
	first.Term(30 * time.Second)
	t.Logf("second sidecar: exit %d; log:\n%s", code, second.logTail(5))
}

// TestKfakeAppClosesWithoutAnswer: the app reads a push and closes the connection without
// answering (it crashed mid-request, or a proxy cut it off). It may have acted on the
// message, so the next push of that message must carry ce-redelivered: true and a higher
// ce-deliveryattempt (G2 and the push contract in docs/guarantees.md). Pushes travel over keep-alive connections, so
// most of these closes hit a reused connection.
func TestKfakeAppClosesWithoutAnswer(t *testing.T) {
	t0 := time.Now()
	const topic, group, n = "orders", "e2e-abort", 40
	brokers := newKfake(t, topic, 1)
	k := newKafkaEnv(t, "kfake", brokers, topic, group)
	app := newRecApp(t, 0, 0)
	var msgs []message
	var aborted []string
	for i := range n {
		id := fmt.Sprintf("a-%02d", i)
		msgs = append(msgs, message{ID: id, Key: "k", Partition: -1})
		if i%4 == 3 {
			aborted = append(aborted, id)
		}
	}
	app.abortFirst(aborted...)
	p := newSidecarConfig(t, "sidecar", kafkaConfig{
		brokers: brokers, topic: topic, group: group, appURL: app.url(),
		dedupPath: filepath.Join(t.TempDir(), "dedup.db"),
	}.yaml()).start()
	k.mustProduce(msgs...)
	tail := func() string { return p.logTail(30) }
	app.waitDelivered(t, n, 30*time.Second, tail)
	k.waitLagZero(30*time.Second, tail)
	p.Term(30 * time.Second)

	pushes, conc := app.snapshot()
	var wrong []string
	for _, id := range aborted {
		var ps []push
		for _, x := range pushes {
			if x.ID == id {
				ps = append(ps, x)
			}
		}
		if len(ps) < 2 {
			wrong = append(wrong, fmt.Sprintf("%s: %d pushes, want at least 2 (the first was cut off)", id, len(ps)))
			continue
		}
		if !ps[1].Redelivered || ps[1].Attempt <= ps[0].Attempt {
			wrong = append(wrong, fmt.Sprintf("%s: push after the cut-off one has ce-redelivered=%v ce-deliveryattempt=%d (first: %d), want true and higher",
				id, ps[1].Redelivered, ps[1].Attempt, ps[0].Attempt))
		}
	}
	r := check(k.producedSoFar(), pushes, conc, true, true)
	printTable(t, row{Broker: "kfake", Test: "app-closes-unanswered", Order: true, Took: time.Since(t0), Report: r,
		Comments: fmt.Sprintf("%d of %d pushes cut off after the app read them", len(aborted), n)})
	r.requireClean(t)
	if len(wrong) > 0 {
		t.Errorf("a message the app may have processed was pushed again without ce-redelivered (G2):\n%s", strings.Join(wrong, "\n"))
	}
}
