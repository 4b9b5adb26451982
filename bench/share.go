package main

// The share scenario (-scenario share): one partition, an app answering in 5 ms, and the
// sidecar as a consumer group member (which is all one partition can use) beside 1, 2 and
// 4 sidecars in one share group (source.kafka.mode: share, KIP-932). Every contender has
// the same delivery settings (ordering none, max_inflight 8, each replica its own bbolt
// store); the rate is unique messages answered 2xx per second, from the first push to the
// last first-push of an ID. BENCH_SHARE_DEDUP=off turns the dedup store off for every
// contender (then the app's latency, not the store's fsync, bounds each sidecar). See
// shareBench.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// shareInflight is every contender's delivery.max_inflight in the share scenario: small,
// so that one sidecar is bound by it and the app's latency, as a fleet is sized.
const shareInflight = 8

type shareContender struct {
	mode     string // group | share
	replicas int
}

func (c shareContender) String() string { return fmt.Sprintf("%s x%d", c.mode, c.replicas) }

// shareApp answers 200 after its delay and counts unique IDs.
type shareApp struct {
	delay  time.Duration
	n      int
	mu     sync.Mutex
	seen   map[string]bool
	pushes int
	first  time.Time
	last   time.Time // when the last unique ID arrived
	done   chan struct{}
}

func (a *shareApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	time.Sleep(a.delay)
	id := r.Header.Get("ce-id")
	now := time.Now()
	a.mu.Lock()
	a.pushes++
	if a.first.IsZero() {
		a.first = now
	}
	if !a.seen[id] {
		a.seen[id] = true
		a.last = now
		if len(a.seen) == a.n {
			close(a.done)
		}
	}
	a.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// shareBench runs each contender runs times, alternating, and prints medians and the ratio
// to group mode.
func shareBench(runs, n int, delay time.Duration) error {
	dir, bin, err := workDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cs := []shareContender{{"group", 1}, {"share", 1}, {"share", 2}, {"share", 4}}
	fmt.Printf("mqsidecar bench, scenario \"share\": %d messages of ~100 B, 1 partition, app sleeping %v, ordering none, max_inflight %d, dedup on (own bbolt per replica); %d runs each, alternating; medians\n",
		n, delay, shareInflight, runs)
	fmt.Printf("  group: one consumer-group member (a second would idle: one partition); share: N sidecars in one share group, fetches held until all N joined\n")
	rates := make([][]float64, len(cs))
	for r := range runs {
		for i, c := range cs {
			rate, dups, err := shareOnce(bin, dir, c, n, delay)
			if err != nil {
				return fmt.Errorf("%s, run %d: %w", c, r+1, err)
			}
			fmt.Printf("  run %d %-9s %8.0f msg/s  dup pushes %d\n", r+1, c, rate, dups)
			rates[i] = append(rates[i], rate)
		}
	}
	fmt.Printf("\n%-16s %10s %10s\n", "median of "+strconv.Itoa(runs), "msg/s", "vs group")
	med := func(v []float64) float64 {
		rs := make([]result, len(v))
		for i, x := range v {
			rs[i] = result{rate: x}
		}
		return median(rs, func(r result) float64 { return r.rate })
	}
	base := med(rates[0])
	for i, c := range cs {
		m := med(rates[i])
		fmt.Printf("%-16s %10.0f %9.0f%%\n", c, m, 100*m/base)
	}
	return nil
}

func shareOnce(bin, dir string, c shareContender, n int, delay time.Duration) (rate float64, dups int, err error) {
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	if err != nil {
		return 0, 0, err
	}
	defer kafka.Close()
	if err := produceOne(kafka.ListenAddrs(), n); err != nil {
		return 0, 0, fmt.Errorf("produce: %w", err)
	}
	// Share members fetch only once all of them joined, so that they share the work from
	// the first push (a member learns of its assignment from its next heartbeat).
	releaseFetches := holdRequests(kafka, kmsg.ShareFetch)
	defer releaseFetches()

	a := &shareApp{delay: delay, n: n, seen: map[string]bool{}, done: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	srv := &http.Server{Handler: a}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	rdir, err := os.MkdirTemp(dir, "share-")
	if err != nil {
		return 0, 0, err
	}
	cmds := make([]*exec.Cmd, c.replicas)
	logs := make([]*bytes.Buffer, c.replicas)
	for i := range cmds {
		cfg := fmt.Sprintf(`source:
  kind: kafka
  kafka: {mode: %s, brokers: [%s], group: bench, topics: [%s], message_id: "header:message-id", commit_interval: 20ms, session_timeout: 6s, client_id: replica-%d}
app: {url: "http://%s/"}
delivery: {ordering: none, max_inflight: %d}
dedup: {enabled: %v, path: %q}
admin: {listen: ""}
log: {level: warn}
`, c.mode, strings.Join(kafka.ListenAddrs(), ","), topic, i, ln.Addr(), shareInflight, os.Getenv("BENCH_SHARE_DEDUP") != "off", filepath.Join(rdir, "dedup-"+strconv.Itoa(i)+".db"))
		path := filepath.Join(rdir, "config-"+strconv.Itoa(i)+".yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			return 0, 0, err
		}
		cmds[i] = exec.Command(bin, "run", "--config", path)
		logs[i] = &bytes.Buffer{}
		cmds[i].Stdout, cmds[i].Stderr = logs[i], logs[i]
	}
	allLogs := func() string {
		var b strings.Builder
		for i, l := range logs {
			fmt.Fprintf(&b, "--- replica %d:\n%s\n", i, tail(l.String()))
		}
		return b.String()
	}
	for i, cmd := range cmds {
		if err := cmd.Start(); err != nil {
			return 0, 0, err
		}
		defer stopAll(cmds[:i+1])
	}
	if c.mode == "share" {
		cl, err := kgo.NewClient(kgo.SeedBrokers(kafka.ListenAddrs()...))
		if err != nil {
			return 0, 0, err
		}
		defer cl.Close()
		adm := kadm.NewClient(cl)
		began := time.Now()
		for {
			if time.Since(began) > time.Minute {
				return 0, 0, fmt.Errorf("share group without %d members after a minute; logs:\n%s", c.replicas, allLogs())
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			gs, err := adm.DescribeShareGroups(ctx, "bench")
			cancel()
			if g, ok := gs["bench"]; err == nil && ok && g.Err == nil && len(g.Members) == c.replicas {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	releaseFetches()
	select {
	case <-a.done:
	case <-time.After(5 * time.Minute):
		return 0, 0, fmt.Errorf("not every message pushed after 5 minutes; logs:\n%s", allLogs())
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return float64(n) / a.last.Sub(a.first).Seconds(), a.pushes - n, nil
}

// produceOne writes n records with unique message-id headers to the one partition.
func produceOne(brokers []string, n int) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		return err
	}
	defer cl.Close()
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{
			Value:   fmt.Appendf(nil, `{"order":%d,"customer":"c-%05d","note":"bench"}`, i, i%9973),
			Headers: []kgo.RecordHeader{{Key: "message-id", Value: []byte("m-" + strconv.Itoa(i))}},
		}
	}
	return cl.ProduceSync(context.Background(), recs...).FirstErr()
}
