//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Delivery-depth proofs on real brokers (issue 5, item 7): key-ordered parallelism with a
// poison key, dead letters with their failure headers, attempts that survive kill -9, the
// Dapr answers, and key mode against partition mode on a slow app. Each test drives the
// built binary with an app whose answer per push is scripted (scriptApp).

// answer is what the scripted app does with one push.
type answer struct {
	status     int
	body       string
	retryAfter string          // Retry-After header, "" = none
	delay      time.Duration   // work before answering
	hold       <-chan struct{} // when set, wait for it (or the request's end) before answering
}

// scriptPush is one push the scripted app received.
type scriptPush struct {
	push
	Body string    // the body of the app's answer
	Done time.Time // when the app answered
}

// success reports whether the answer means success to the sidecar: 2xx without a Dapr
// RETRY or DROP body.
func (p scriptPush) success() bool {
	return p.Status >= 200 && p.Status < 300 && !strings.Contains(p.Body, "RETRY") && !strings.Contains(p.Body, "DROP")
}

// scriptApp is an app whose answer to each push comes from decide (called with the push and
// how many pushes of that ID arrived so far, this one included). It records every push.
type scriptApp struct {
	t      testing.TB
	addr   string
	decide func(p push, nth int) answer

	mu         sync.Mutex
	srv        *http.Server
	pushes     []scriptPush
	seen       map[string]int
	inflight   map[string]int
	concurrent []string
}

func newScriptApp(t testing.TB, decide func(p push, nth int) answer) *scriptApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &scriptApp{t: t, addr: ln.Addr().String(), decide: decide, seen: map[string]int{}, inflight: map[string]int{}}
	a.srv = &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = a.srv.Serve(ln) }()
	t.Cleanup(func() { a.srv.Close() })
	return a
}

func (a *scriptApp) url() string { return "http://" + a.addr + "/push" }

func (a *scriptApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	attempt, _ := strconv.Atoi(r.Header.Get("ce-deliveryattempt"))
	p := push{
		ID: r.Header.Get("ce-id"), Key: r.Header.Get("ce-partitionkey"),
		Partition: r.Header.Get("ce-partition"), Offset: r.Header.Get("ce-offset"),
		Attempt: attempt, Redelivered: r.Header.Get("ce-redelivered") == "true", At: time.Now(),
	}
	a.mu.Lock()
	p.Seq = len(a.pushes)
	a.pushes = append(a.pushes, scriptPush{push: p})
	if a.inflight[p.ID] > 0 {
		a.concurrent = append(a.concurrent, p.ID)
	}
	a.inflight[p.ID]++
	a.seen[p.ID]++
	nth := a.seen[p.ID]
	a.mu.Unlock()

	ans := a.decide(p, nth)
	status := holdAnswer(r.Context(), ans.hold, ans.delay, ans.status)
	a.mu.Lock()
	a.pushes[p.Seq].Status = status
	a.pushes[p.Seq].Body = ans.body
	a.pushes[p.Seq].Done = time.Now()
	a.inflight[p.ID]--
	a.mu.Unlock()
	if status == 0 {
		panic(http.ErrAbortHandler) // the sidecar is gone (or gave up): no answer
	}
	if ans.retryAfter != "" {
		w.Header().Set("Retry-After", ans.retryAfter)
	}
	if ans.body != "" {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, ans.body)
}

// snapshot returns every push so far and the IDs pushed concurrently with themselves.
func (a *scriptApp) snapshot() ([]scriptPush, []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]scriptPush(nil), a.pushes...), append([]string(nil), a.concurrent...)
}

// succeeded returns the IDs answered with success so far.
func (a *scriptApp) succeeded() map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	ok := map[string]bool{}
	for _, p := range a.pushes {
		if p.success() {
			ok[p.ID] = true
		}
	}
	return ok
}

// waitSucceeded waits until every ID in ids was answered with success.
func (a *scriptApp) waitSucceeded(t testing.TB, ids []string, timeout time.Duration, extra ...func() string) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%d IDs answered with success", len(ids)), func() (bool, string) {
		ok := a.succeeded()
		missing := 0
		for _, id := range ids {
			if !ok[id] {
				missing++
			}
		}
		return missing == 0, fmt.Sprintf("%d of %d missing", missing, len(ids))
	}, extra...)
}

// asPushes converts pushes for check(): a Dapr RETRY/DROP answer is not a success there.
func asPushes(ps []scriptPush, keep func(scriptPush) bool) []push {
	out := make([]push, 0, len(ps))
	for _, p := range ps {
		if keep != nil && !keep(p) {
			continue
		}
		q := p.push
		if p.Status >= 200 && p.Status < 300 && !p.success() {
			q.Status = -1
		}
		out = append(out, q)
	}
	return out
}

// pushesOf returns the pushes of id in arrival order.
func pushesOf(ps []scriptPush, id string) []scriptPush {
	var out []scriptPush
	for _, p := range ps {
		if p.ID == id {
			out = append(out, p)
		}
	}
	return out
}

// deliveryRow is one line of the delivery tests' table.
type deliveryRow struct {
	scenario     string
	r            report
	orderApplies bool
	deadLettered int
	took         time.Duration
	notes        string
}

// printDeliveryTable prints rows with t.Log and to stdout.
func printDeliveryTable(t testing.TB, rows ...deliveryRow) {
	t.Helper()
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tmessages\tunique\tpushes\tlost\tdup flagged\tdup silent\torder viol\tconcurrent\tdead-lettered\tduration\tnotes")
	for _, r := range rows {
		order := fmt.Sprint(r.r.OrderViolations)
		if !r.orderApplies {
			order = "n/a"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%d\t%d\t%s\t%s\n", r.scenario, r.r.Produced, r.r.Unique, r.r.Pushes,
			r.r.Lost, r.r.FlaggedDups, r.r.SilentDups, order, r.r.Concurrent, r.deadLettered, r.took.Round(100*time.Millisecond), r.notes)
	}
	tw.Flush()
	t.Log("\n" + b.String())
	fmt.Fprint(os.Stdout, b.String())
}

// kafkaDeliveryYAML is a Kafka sidecar config with the given delivery section (indented
// lines under "delivery:").
func kafkaDeliveryYAML(k *kafkaEnv, group, appURL, dedupPath, delivery string) string {
	return kafkaConfig{
		brokers: k.brokers, topic: k.topic, group: group, instanceID: group + "-0",
		appURL: appURL, dedupPath: dedupPath,
	}.withDelivery(delivery)
}

// createKafkaTopic creates an extra topic (a dead-letter target) on k's cluster.
func createKafkaTopic(t testing.TB, k *kafkaEnv, topic string, partitions int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := k.adm.CreateTopics(ctx, partitions, 1, nil, topic)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
}

// topicEnd returns the sum of the high watermarks of topic.
func topicEnd(k *kafkaEnv, topic string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := k.adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n, nil
}

// waitTopicEnd waits until topic holds n records.
func waitTopicEnd(t testing.TB, k *kafkaEnv, topic string, n int64, timeout time.Duration, extra ...func() string) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%d records in %s", n, topic), func() (bool, string) {
		got, err := topicEnd(k, topic)
		if err != nil {
			return false, err.Error()
		}
		return got >= n, fmt.Sprintf("%d records", got)
	}, extra...)
}

// readKafkaTopic reads every record of topic (up to its current end) from the start.
func readKafkaTopic(t testing.TB, k *kafkaEnv, topic string) []*kgo.Record {
	t.Helper()
	n, err := topicEnd(k, topic)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var recs []*kgo.Record
	for int64(len(recs)) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %s: %d of %d records within a minute", topic, len(recs), n)
		}
		fs.EachError(func(_ string, _ int32, err error) { t.Logf("read %s: %v", topic, err) })
		recs = append(recs, fs.Records()...)
	}
	sort.SliceStable(recs, func(i, j int) bool {
		if recs[i].Partition != recs[j].Partition {
			return recs[i].Partition < recs[j].Partition
		}
		return recs[i].Offset < recs[j].Offset
	})
	return recs
}

func recordHeader(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// offsetOf returns the offset where k stored the (first) copy of id on partition p.
func (k *kafkaEnv) offsetOf(p int32, id string) int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	best := int64(-1)
	for off, got := range k.at[p] {
		if got == id && (best < 0 || off < best) {
			best = off
		}
	}
	return best
}

// checkDeadLetter compares a dead-letter record with what is expected of it.
func checkDeadLetter(rec *kgo.Record, id, key, reason string, status, attempts int, partition int32, offset int64) []string {
	var bad []string
	want := map[string]string{
		"message-id":              id,
		"mqsidecar-dlq-id":        id,
		"mqsidecar-dlq-reason":    reason,
		"mqsidecar-dlq-status":    strconv.Itoa(status),
		"mqsidecar-dlq-attempts":  strconv.Itoa(attempts),
		"mqsidecar-dlq-partition": strconv.Itoa(int(partition)),
		"mqsidecar-dlq-offset":    strconv.FormatInt(offset, 10),
	}
	names := make([]string, 0, len(want))
	for h := range want {
		names = append(names, h)
	}
	sort.Strings(names)
	for _, h := range names {
		if got := recordHeader(rec, h); got != want[h] {
			bad = append(bad, fmt.Sprintf("dead letter %s: header %s = %q, want %q", id, h, got, want[h]))
		}
	}
	for _, h := range []string{"mqsidecar-dlq-time", "mqsidecar-dlq-source"} {
		if recordHeader(rec, h) == "" {
			bad = append(bad, fmt.Sprintf("dead letter %s: header %s missing", id, h))
		}
	}
	if reason != "dropped_by_app" && recordHeader(rec, "mqsidecar-dlq-error") == "" {
		bad = append(bad, fmt.Sprintf("dead letter %s: header mqsidecar-dlq-error missing", id))
	}
	if string(rec.Key) != key {
		bad = append(bad, fmt.Sprintf("dead letter %s: key %q, want %q", id, rec.Key, key))
	}
	if !strings.Contains(string(rec.Value), fmt.Sprintf("%q", id)) {
		bad = append(bad, fmt.Sprintf("dead letter %s: payload %q is not the original", id, rec.Value))
	}
	return bad
}

// TestKafkaE2EPoisonKey: one partition, ordering: key. A poison key whose messages the app
// always fails (500, slowly: 300 ms per push, so the poison lane is busy for several seconds
// whatever the backoff jitter) and 100 healthy keys of 20 messages each, all produced before
// the sidecar starts, with the first poison message at the head of the partition. With
// max_attempts 4 and a dead-letter topic: every healthy message is delivered, each key in
// produce order, all of them while the poison key is still being retried; each poison
// message is pushed exactly 4 times and lands in the dead-letter topic with the failure
// headers; the group's lag ends at 0.
func TestKafkaE2EPoisonKey(t *testing.T) {
	t0 := time.Now()
	k := newKafkaE2E(t, "poison", 1)
	dlq := k.topic + "-dlq"
	createKafkaTopic(t, k, dlq, 1)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 11))
	t.Logf("seed %d, topic %s, dead letters to %s", seed, k.topic, dlq)

	const healthyKeys, perKey, poisonMsgs = 100, 20, 5
	var keys []string
	for i := range healthyKeys {
		for range perKey {
			keys = append(keys, fmt.Sprintf("h%03d", i))
		}
	}
	rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	var msgs, healthy []message
	var poisonIDs, healthyIDs []string
	seq := map[string]int{}
	for i, key := range keys {
		if i%(len(keys)/poisonMsgs) == 0 {
			id := fmt.Sprintf("poison-%d", len(poisonIDs))
			poisonIDs = append(poisonIDs, id)
			msgs = append(msgs, message{ID: id, Key: "poison", Partition: -1})
		}
		m := message{ID: fmt.Sprintf("%s-%02d", key, seq[key]), Key: key, Partition: -1}
		seq[key]++
		msgs = append(msgs, m)
		healthy = append(healthy, m)
		healthyIDs = append(healthyIDs, m.ID)
	}
	k.mustProduce(msgs...)

	app := newScriptApp(t, func(p push, _ int) answer {
		if p.Key == "poison" {
			return answer{status: http.StatusInternalServerError, delay: 300 * time.Millisecond}
		}
		return answer{status: http.StatusOK, delay: time.Millisecond}
	})
	cfg := newSidecarConfig(t, "sidecar", kafkaDeliveryYAML(k, k.group, app.url(), filepath.Join(t.TempDir(), "dedup.db"), fmt.Sprintf(`  ordering: key
  max_inflight: 64
  max_attempts: 4
  backoff: {initial: 100ms, max: 1s, multiplier: 2}
  dead_letter: {target: %s}`, dlq)))
	started := time.Now()
	p := cfg.start()
	tail := func() string { return p.logTail(30) }
	app.waitSucceeded(t, healthyIDs, 2*time.Minute, tail)
	waitTopicEnd(t, k, dlq, poisonMsgs, 2*time.Minute, tail)
	k.waitLagZero(time.Minute, tail)
	dead, _ := p.metric("mqsidecar_messages_dead_lettered_total")
	p.Term(40 * time.Second)

	pushes, conc := app.snapshot()
	// The healthy messages: none lost, per-key order, no duplicates, no concurrency.
	r := check(healthy, asPushes(pushes, func(p scriptPush) bool { return p.Key != "poison" }), conc, true, true)
	// When the last healthy message was answered, measured from the app's records.
	var lastHealthy, lastPoison, firstPoisonFinal time.Time
	for _, p := range pushes {
		if p.Key != "poison" && p.success() && p.Done.After(lastHealthy) {
			lastHealthy = p.Done
		}
		if p.Key == "poison" && p.At.After(lastPoison) {
			lastPoison = p.At
		}
		if p.ID == poisonIDs[0] && p.Attempt == 4 {
			firstPoisonFinal = p.At
		}
	}
	var problems []string
	for _, id := range poisonIDs {
		ps := pushesOf(pushes, id)
		var att []string
		for i, p := range ps {
			att = append(att, strconv.Itoa(p.Attempt))
			if p.Attempt != i+1 || p.Status != http.StatusInternalServerError {
				problems = append(problems, fmt.Sprintf("%s: push %d had ce-deliveryattempt %d, answer %d", id, i+1, p.Attempt, p.Status))
			}
		}
		if len(ps) != 4 {
			problems = append(problems, fmt.Sprintf("%s pushed %d times (attempts %s), want exactly 4 (max_attempts)", id, len(ps), strings.Join(att, ",")))
		}
	}
	recs := readKafkaTopic(t, k, dlq)
	if len(recs) != poisonMsgs {
		problems = append(problems, fmt.Sprintf("dead-letter topic holds %d records, want %d", len(recs), poisonMsgs))
	}
	for i, rec := range recs {
		if i >= len(poisonIDs) {
			break
		}
		id := poisonIDs[i] // one lane: dead-lettered in produce order
		problems = append(problems, checkDeadLetter(rec, id, "poison", "max_attempts", 500, 4, 0, k.offsetOf(0, id))...)
	}
	if err := k.checkSettled(); err != nil {
		problems = append(problems, "after SIGTERM: "+err.Error())
	}
	notes := fmt.Sprintf("after the sidecar's start: healthy keys done at %.1fs, poison's 1st message final attempt at %.1fs, poison's last push at %.1fs; metric dead_lettered %v",
		lastHealthy.Sub(started).Seconds(), firstPoisonFinal.Sub(started).Seconds(), lastPoison.Sub(started).Seconds(), dead)
	printDeliveryTable(t, deliveryRow{scenario: "kafka poison key (1 partition, ordering key)", r: r, orderApplies: true,
		deadLettered: len(recs), took: time.Since(t0), notes: notes})
	r.requireClean(t)
	if !lastHealthy.Before(lastPoison) {
		problems = append(problems, fmt.Sprintf("healthy keys waited for the poison key: the last healthy message was answered at %s, the poison key's last push came at %s",
			lastHealthy.Format(time.StampMilli), lastPoison.Format(time.StampMilli)))
	}
	if len(problems) > 0 {
		t.Errorf("poison key:\n%s", strings.Join(problems, "\n"))
	}
}

// TestKafkaE2ECrashDuringRetries: a message the app keeps failing (503 with Retry-After: 1,
// so each retry waits at least a second and the persisted attempt count is durable before
// the next push), max_attempts 6. The sidecar is killed with SIGKILL while the app holds the
// third attempt; after the restart the next push carries ce-deliveryattempt 4 (the count
// continues) and ce-redelivered: true, the message is pushed at most 6 times in all, and it
// is dead-lettered with attempts 6. A few healthy messages on other keys are delivered.
func TestKafkaE2ECrashDuringRetries(t *testing.T) {
	t0 := time.Now()
	k := newKafkaE2E(t, "crashretry", 1)
	dlq := k.topic + "-dlq"
	createKafkaTopic(t, k, dlq, 1)
	const failID, maxAttempts, killAt = "crash-fail", 6, 3
	msgs := []message{{ID: failID, Key: "bad", Partition: -1}}
	var healthyIDs []string
	for i := range 20 {
		m := message{ID: fmt.Sprintf("ok-%02d", i), Key: fmt.Sprintf("k%d", i%4), Partition: -1}
		msgs = append(msgs, m)
		healthyIDs = append(healthyIDs, m.ID)
	}
	k.mustProduce(msgs...)

	reached := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	app := newScriptApp(t, func(p push, _ int) answer {
		if p.ID != failID {
			return answer{status: http.StatusOK}
		}
		a := answer{status: http.StatusServiceUnavailable, retryAfter: "1"}
		if p.Attempt == killAt {
			once.Do(func() { close(reached) })
			a.hold = release
		}
		return a
	})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	cfg := newSidecarConfig(t, "sidecar", kafkaDeliveryYAML(k, k.group, app.url(), filepath.Join(t.TempDir(), "dedup.db"), fmt.Sprintf(`  ordering: key
  max_inflight: 16
  max_attempts: %d
  backoff: {initial: 100ms, max: 200ms, multiplier: 2}
  dead_letter: {target: %s}`, maxAttempts, dlq)))
	p := cfg.start()
	select {
	case <-reached:
	case <-time.After(time.Minute):
		p.fatalf("attempt %d of %s never reached the app", killAt, failID)
	}
	p.Kill9()
	killedAt := time.Now()
	close(release)
	t.Logf("SIGKILL while the app held attempt %d of %s", killAt, failID)
	p2 := cfg.start()
	tail := func() string { return p2.logTail(30) }
	app.waitSucceeded(t, healthyIDs, time.Minute, tail)
	waitTopicEnd(t, k, dlq, 1, time.Minute, tail)
	k.waitLagZero(time.Minute, tail)
	p2.Term(40 * time.Second)

	pushes, conc := app.snapshot()
	fails := pushesOf(pushes, failID)
	var seq []string
	var problems []string
	before, after := 0, -1
	for i, fp := range fails {
		mark := ""
		if fp.Redelivered {
			mark = "r"
		}
		seq = append(seq, fmt.Sprintf("%d%s", fp.Attempt, mark))
		if fp.At.Before(killedAt) {
			before++
		} else if after < 0 {
			after = i
		}
		if i > 0 && fp.Attempt <= fails[i-1].Attempt {
			problems = append(problems, fmt.Sprintf("ce-deliveryattempt went from %d to %d", fails[i-1].Attempt, fp.Attempt))
		}
		if i > 0 && !fp.Redelivered {
			problems = append(problems, fmt.Sprintf("push %d (attempt %d) without ce-redelivered: true", i+1, fp.Attempt))
		}
	}
	switch {
	case after < 0:
		problems = append(problems, "no push after the restart")
	default:
		if got := fails[after].Attempt; got != killAt+1 {
			problems = append(problems, fmt.Sprintf("first push after the restart has ce-deliveryattempt %d, want %d (the count continues)", got, killAt+1))
		}
		if !fails[after].Redelivered {
			problems = append(problems, "first push after the restart lacks ce-redelivered: true")
		}
	}
	if len(fails) > maxAttempts {
		problems = append(problems, fmt.Sprintf("%s pushed %d times, more than max_attempts %d", failID, len(fails), maxAttempts))
	}
	recs := readKafkaTopic(t, k, dlq)
	if len(recs) != 1 {
		problems = append(problems, fmt.Sprintf("dead-letter topic holds %d records, want 1", len(recs)))
	} else {
		problems = append(problems, checkDeadLetter(recs[0], failID, "bad", "max_attempts", 503, maxAttempts, 0, k.offsetOf(0, failID))...)
	}
	healthy := k.producedSoFar()[1:]
	r := check(healthy, asPushes(pushes, func(p scriptPush) bool { return p.ID != failID }), conc, true, true)
	printDeliveryTable(t, deliveryRow{scenario: "kafka crash during retries (kill -9 at attempt 3)", r: r, orderApplies: true,
		deadLettered: len(recs), took: time.Since(t0),
		notes: fmt.Sprintf("%s pushes: %s (r = ce-redelivered), %d before the kill", failID, strings.Join(seq, " "), before)})
	r.requireClean(t)
	if len(problems) > 0 {
		t.Errorf("crash during retries:\n%s", strings.Join(problems, "\n"))
	}
}

// TestKafkaE2EKeyBeatsPartition: one partition, an app that takes 5 ms per push, 50 keys,
// 2000 messages; the same topic consumed twice by fresh groups, with ordering: key and with
// ordering: partition. Both with zero per-key order violations; key mode must push
// different keys at once (at least 8 pushes on the wire together) and partition mode one at
// a time. The rates are logged, not asserted: how much faster key mode is depends on the
// machine's load (15x on a quiet box, 4.6x at load 15); `go run ./bench -scenario key`
// measures it.
func TestKafkaE2EKeyBeatsPartition(t *testing.T) {
	t0 := time.Now()
	k := newKafkaE2E(t, "keyvspart", 1)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 13))
	const n, keys = 2000, 50
	msgs := workload(rng, "kp", n, keys, 0)
	k.mustProduce(msgs...)
	t.Logf("seed %d, %d messages on %d keys in one partition of %s", seed, n, keys, k.topic)

	type result struct {
		mode string
		took time.Duration
		rate float64
		r    report
		peak int // most pushes on the wire at once
	}
	run := func(mode string) result {
		group := fmt.Sprintf("%s-%s", k.topic, mode)
		env := newKafkaEnv(t, "kafka", k.brokers, k.topic, group)
		app := newScriptApp(t, func(push, int) answer { return answer{status: http.StatusOK, delay: 5 * time.Millisecond} })
		cfg := newSidecarConfig(t, "sidecar-"+mode, kafkaDeliveryYAML(k, group, app.url(), filepath.Join(t.TempDir(), "dedup.db"),
			fmt.Sprintf("  ordering: %s\n  max_inflight: 64", mode)))
		p := cfg.start()
		tail := func() string { return p.logTail(30) }
		ids := make([]string, len(msgs))
		for i, m := range msgs {
			ids[i] = m.ID
		}
		app.waitSucceeded(t, ids, 3*time.Minute, tail)
		env.waitLagZero(time.Minute, tail)
		p.Term(40 * time.Second)
		pushes, conc := app.snapshot()
		first, last := pushes[0].At, time.Time{}
		for _, p := range pushes {
			if p.At.Before(first) {
				first = p.At
			}
			if p.Done.After(last) {
				last = p.Done
			}
		}
		took := last.Sub(first)
		r := check(msgs, asPushes(pushes, nil), conc, true, true)
		return result{mode: mode, took: took, rate: float64(n) / took.Seconds(), r: r, peak: peakOnWire(pushes)}
	}
	key := run("key")
	part := run("partition")
	ratio := key.rate / part.rate
	rows := []deliveryRow{}
	for _, res := range []result{key, part} {
		rows = append(rows, deliveryRow{scenario: "kafka ordering " + res.mode + " (1 partition, 5 ms app)", r: res.r, orderApplies: true,
			took: res.took, notes: fmt.Sprintf("%.0f msg/s (first push to last answer)", res.rate)})
	}
	printDeliveryTable(t, rows...)
	t.Logf("key mode %.0f msg/s (%d pushes at once at most), partition mode %.0f msg/s (%d): %.1fx; whole test %s",
		key.rate, key.peak, part.rate, part.peak, ratio, time.Since(t0).Round(100*time.Millisecond))
	fmt.Fprintf(os.Stdout, "key mode %.0f msg/s, partition mode %.0f msg/s: %.1fx\n", key.rate, part.rate, ratio)
	key.r.requireClean(t)
	part.r.requireClean(t)
	if key.peak < 8 {
		t.Errorf("ordering: key had at most %d pushes on the wire at once (50 keys, max_inflight 64), want at least 8", key.peak)
	}
	if part.peak != 1 {
		t.Errorf("ordering: partition had %d pushes of one partition on the wire at once, want 1", part.peak)
	}
}

// peakOnWire returns the most pushes the app was working on at once (from their arrival
// to their answer).
func peakOnWire(pushes []scriptPush) int {
	type edge struct {
		at    time.Time
		delta int
	}
	edges := make([]edge, 0, 2*len(pushes))
	for _, p := range pushes {
		if !p.Done.IsZero() { // not answered (the connection closed): not counted
			edges = append(edges, edge{p.At, 1}, edge{p.Done, -1})
		}
	}
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.delta - b.delta // an answer before an arrival at the same instant
	})
	peak, n := 0, 0
	for _, e := range edges {
		n += e.delta
		peak = max(peak, n)
	}
	return peak
}

// TestKafkaE2EDaprAnswers: the app answers 200 with Dapr bodies. IDs ≡ 0 mod 5 get
// {"status":"RETRY"} on the first push and {"status":"SUCCESS"} on the second; IDs ≡ 1 get
// {"status":"DROP"}; the rest plain 200 (every other one with {"status":"SUCCESS"}). With a
// dead-letter topic: RETRY is pushed again (attempt 2, ce-redelivered) and then succeeds,
// DROP is pushed once and lands in the dead-letter topic (reason dropped_by_app). Without a
// dead-letter target (same topic, a fresh group): DROP is pushed once, acknowledged and
// counted as dropped. Both groups end with lag 0.
func TestKafkaE2EDaprAnswers(t *testing.T) {
	t0 := time.Now()
	k := newKafkaE2E(t, "dapr", 2)
	dlq := k.topic + "-dlq"
	createKafkaTopic(t, k, dlq, 1)
	const n = 300
	var msgs []message
	var retryIDs, dropIDs, okIDs []string
	for i := range n {
		m := message{ID: fmt.Sprintf("dapr-%03d", i), Key: fmt.Sprintf("k%02d", i%16), Partition: -1}
		msgs = append(msgs, m)
		switch i % 5 {
		case 0:
			retryIDs = append(retryIDs, m.ID)
		case 1:
			dropIDs = append(dropIDs, m.ID)
		default:
			okIDs = append(okIDs, m.ID)
		}
	}
	k.mustProduce(msgs...)
	kind := func(id string) int {
		i, _ := strconv.Atoi(strings.TrimPrefix(id, "dapr-"))
		return i % 5
	}
	decide := func(p push, nth int) answer {
		switch kind(p.ID) {
		case 0:
			if nth == 1 {
				return answer{status: http.StatusOK, body: `{"status":"RETRY"}`}
			}
			return answer{status: http.StatusOK, body: `{"status":"SUCCESS"}`}
		case 1:
			return answer{status: http.StatusOK, body: `{"status":"DROP"}`}
		case 2:
			return answer{status: http.StatusOK, body: `{"status":"SUCCESS"}`}
		}
		return answer{status: http.StatusOK}
	}

	var rows []deliveryRow
	var problems []string
	for _, withDLQ := range []bool{true, false} {
		t1 := time.Now()
		label, group, dl := "with dead-letter topic", k.group, fmt.Sprintf("\n  dead_letter: {target: %s}", dlq)
		env := k
		if !withDLQ {
			label, group, dl = "without dead-letter target", k.group+"-nodlq", ""
			env = newKafkaEnv(t, "kafka", k.brokers, k.topic, group)
		}
		app := newScriptApp(t, decide)
		cfg := newSidecarConfig(t, "sidecar-"+strings.Fields(label)[0], kafkaDeliveryYAML(k, group, app.url(), filepath.Join(t.TempDir(), "dedup.db"),
			"  ordering: key\n  max_inflight: 32\n  backoff: {initial: 50ms, max: 500ms, multiplier: 2}"+dl))
		p := cfg.start()
		tail := func() string { return p.logTail(30) }
		app.waitSucceeded(t, append(append([]string(nil), retryIDs...), okIDs...), 2*time.Minute, tail)
		if withDLQ {
			waitTopicEnd(t, k, dlq, int64(len(dropIDs)), time.Minute, tail)
		}
		env.waitLagZero(time.Minute, tail)
		dropped, err := p.metric("mqsidecar_messages_dropped_total")
		if err != nil {
			problems = append(problems, label+": "+err.Error())
		}
		dead, err := p.metric("mqsidecar_messages_dead_lettered_total")
		if err != nil {
			problems = append(problems, label+": "+err.Error())
		}
		p.Term(40 * time.Second)

		pushes, conc := app.snapshot()
		for _, id := range retryIDs {
			ps := pushesOf(pushes, id)
			if len(ps) != 2 || ps[0].Attempt != 1 || ps[1].Attempt != 2 || !ps[1].Redelivered || !ps[1].success() {
				problems = append(problems, fmt.Sprintf("%s: RETRY-then-SUCCESS %s: %d pushes %v, want attempts 1 then 2 (redelivered), second answered SUCCESS", label, id, len(ps), attemptsOf(ps)))
			}
		}
		for _, id := range dropIDs {
			if ps := pushesOf(pushes, id); len(ps) != 1 {
				problems = append(problems, fmt.Sprintf("%s: DROP %s pushed %d times %v, want once", label, id, len(ps), attemptsOf(ps)))
			}
		}
		for _, id := range okIDs {
			if ps := pushesOf(pushes, id); len(ps) != 1 {
				problems = append(problems, fmt.Sprintf("%s: SUCCESS %s pushed %d times, want once", label, id, len(ps)))
			}
		}
		var kept []message
		for _, m := range msgs {
			if kind(m.ID) != 1 {
				kept = append(kept, m)
			}
		}
		r := check(kept, asPushes(pushes, func(p scriptPush) bool { return kind(p.ID) != 1 }), conc, true, true)
		r.requireClean(t)
		deadN := 0
		if withDLQ {
			recs := readKafkaTopic(t, k, dlq)
			deadN = len(recs)
			if len(recs) != len(dropIDs) {
				problems = append(problems, fmt.Sprintf("%s: dead-letter topic holds %d records, want %d", label, len(recs), len(dropIDs)))
			}
			byID := map[string]*kgo.Record{}
			for _, rec := range recs {
				byID[recordHeader(rec, "message-id")] = rec
			}
			for _, id := range dropIDs {
				rec := byID[id]
				if rec == nil {
					problems = append(problems, fmt.Sprintf("%s: DROP %s not in the dead-letter topic", label, id))
					continue
				}
				i, _ := strconv.Atoi(strings.TrimPrefix(id, "dapr-"))
				part, _ := strconv.Atoi(recordHeader(rec, "mqsidecar-dlq-partition"))
				problems = append(problems, checkDeadLetter(rec, id, fmt.Sprintf("k%02d", i%16), "dropped_by_app", 200, 1, int32(part), k.offsetOf(int32(part), id))...)
			}
			if dead != float64(len(dropIDs)) || dropped != 0 {
				problems = append(problems, fmt.Sprintf("%s: metrics dead_lettered %v dropped %v, want %d and 0", label, dead, dropped, len(dropIDs)))
			}
		} else {
			if end, err := topicEnd(k, dlq); err != nil || end != int64(len(dropIDs)) {
				problems = append(problems, fmt.Sprintf("%s: the dead-letter topic changed: %d records (%v)", label, end, err))
			}
			if dropped != float64(len(dropIDs)) || dead != 0 {
				problems = append(problems, fmt.Sprintf("%s: metrics dropped %v dead_lettered %v, want %d and 0", label, dropped, dead, len(dropIDs)))
			}
		}
		rows = append(rows, deliveryRow{scenario: "kafka dapr answers, " + label, r: r, orderApplies: true, deadLettered: deadN, took: time.Since(t1),
			notes: fmt.Sprintf("%d RETRY→SUCCESS, %d DROP (metric dropped %v), %d SUCCESS; order/loss counted without DROP IDs", len(retryIDs), len(dropIDs), dropped, len(okIDs))})
	}
	printDeliveryTable(t, rows...)
	t.Logf("whole test %s", time.Since(t0).Round(100*time.Millisecond))
	if len(problems) > 0 {
		t.Errorf("dapr answers:\n%s", strings.Join(problems, "\n"))
	}
}

func attemptsOf(ps []scriptPush) []int {
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = p.Attempt
	}
	return out
}

// TestRabbitMQE2EDeadLetter: a durable queue, a dead-letter exchange with a bound queue, and
// an app that answers 422 (permanent) for every tenth message: those are pushed once and
// published to the exchange with the failure headers (confirmed) before the original is
// acknowledged; everything else is delivered; the original queue ends empty.
func TestRabbitMQE2EDeadLetter(t *testing.T) {
	t0 := time.Now()
	r := newRabbitE2E(t, "dlq")
	exchange, dlQueue := r.queue+"-dlx", r.queue+"-dead"
	conn, err := amqp.Dial(r.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(exchange, "direct", true, false, false, false, nil); err != nil {
		t.Fatalf("declare exchange %s: %v", exchange, err)
	}
	if _, err := ch.QueueDeclare(dlQueue, true, false, false, false, nil); err != nil {
		t.Fatalf("declare queue %s: %v", dlQueue, err)
	}
	if err := ch.QueueBind(dlQueue, "dead", exchange, false, nil); err != nil {
		t.Fatalf("bind %s: %v", dlQueue, err)
	}
	t.Cleanup(func() {
		if c, err := amqp.Dial(r.url); err == nil {
			if ch, err := c.Channel(); err == nil {
				_, _ = ch.QueueDelete(dlQueue, false, false, false)
				_ = ch.ExchangeDelete(exchange, false, false)
			}
			c.Close()
		}
	})

	const n = 200
	var msgs []message
	var badIDs, goodIDs []string
	for i := range n {
		m := message{ID: fmt.Sprintf("rdl-%03d", i), Partition: -1}
		msgs = append(msgs, m)
		if i%10 == 3 {
			badIDs = append(badIDs, m.ID)
		} else {
			goodIDs = append(goodIDs, m.ID)
		}
	}
	bad := map[string]bool{}
	for _, id := range badIDs {
		bad[id] = true
	}
	mustProduce(t, r, msgs...)
	app := newScriptApp(t, func(p push, _ int) answer {
		if bad[p.ID] {
			return answer{status: http.StatusUnprocessableEntity, body: `{"error":"invalid order"}`}
		}
		return answer{status: http.StatusOK}
	})
	cfg := newSidecarConfig(t, "sidecar", sidecarYAML("rabbitmq", fmt.Sprintf("    queue: %s\n    prefetch: 32\n    message_id: message_id", r.queue),
		app.url(), "  max_inflight: 32\n  backoff: {initial: 20ms, max: 500ms, multiplier: 2}\n  dead_letter: {target: "+exchange+"/dead}",
		filepath.Join(t.TempDir(), "dedup.db"), ""), "MQSIDECAR_SOURCE_RABBITMQ_URL="+r.url)
	p := cfg.start()
	tail := func() string { return p.logTail(30) }
	app.waitSucceeded(t, goodIDs, 2*time.Minute, tail)
	waitFor(t, time.Minute, fmt.Sprintf("%d messages in %s", len(badIDs), dlQueue), func() (bool, string) {
		q, err := ch.QueueDeclarePassive(dlQueue, true, false, false, false, nil)
		if err != nil {
			return false, err.Error()
		}
		return q.Messages >= len(badIDs), fmt.Sprintf("%d messages", q.Messages)
	}, tail)
	r.waitSettled(time.Minute, tail)
	p.Term(40 * time.Second)

	var problems []string
	if err := r.checkSettled(); err != nil {
		problems = append(problems, "after SIGTERM: "+err.Error())
	}
	got := map[string]amqp.Delivery{}
	for {
		d, ok, err := ch.Get(dlQueue, true)
		if err != nil {
			t.Fatalf("get from %s: %v", dlQueue, err)
		}
		if !ok {
			break
		}
		if _, dup := got[d.MessageId]; dup {
			problems = append(problems, fmt.Sprintf("%s dead-lettered twice", d.MessageId))
		}
		got[d.MessageId] = d
	}
	if len(got) != len(badIDs) {
		problems = append(problems, fmt.Sprintf("dead-letter queue holds %d distinct messages, want %d", len(got), len(badIDs)))
	}
	for _, id := range badIDs {
		d, ok := got[id]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s not dead-lettered", id))
			continue
		}
		want := map[string]string{
			"mqsidecar-dlq-reason": "permanent", "mqsidecar-dlq-status": "422", "mqsidecar-dlq-attempts": "1",
			"mqsidecar-dlq-id": id, "mqsidecar-dlq-queue": r.queue,
		}
		for h, v := range want {
			if g := fmt.Sprint(d.Headers[h]); g != v {
				problems = append(problems, fmt.Sprintf("%s: header %s = %q, want %q", id, h, g, v))
			}
		}
		for _, h := range []string{"mqsidecar-dlq-error", "mqsidecar-dlq-time", "mqsidecar-dlq-source"} {
			if fmt.Sprint(d.Headers[h]) == "" || d.Headers[h] == nil {
				problems = append(problems, fmt.Sprintf("%s: header %s missing", id, h))
			}
		}
		if !strings.Contains(string(d.Body), fmt.Sprintf("%q", id)) {
			problems = append(problems, fmt.Sprintf("%s: payload %q is not the original", id, d.Body))
		}
	}
	pushes, conc := app.snapshot()
	for _, id := range badIDs {
		if ps := pushesOf(pushes, id); len(ps) != 1 {
			problems = append(problems, fmt.Sprintf("%s (422) pushed %d times %v, want once", id, len(ps), attemptsOf(ps)))
		}
	}
	var good []message
	for _, m := range msgs {
		if !bad[m.ID] {
			good = append(good, m)
		}
	}
	rep := check(good, asPushes(pushes, func(p scriptPush) bool { return !bad[p.ID] }), conc, false, false)
	printDeliveryTable(t, deliveryRow{scenario: "rabbitmq permanent 4xx -> dead-letter exchange", r: rep, deadLettered: len(got), took: time.Since(t0),
		notes: fmt.Sprintf("%d answered 422, target %s/dead -> queue %s", len(badIDs), exchange, dlQueue)})
	rep.requireClean(t)
	if len(problems) > 0 {
		t.Errorf("rabbitmq dead letters:\n%s", strings.Join(problems, "\n"))
	}
}
